//! Hostile bytes against the engine's decoders: every metadata request and every record the
//! metadata service keeps or sends (each type implementing `Record`, checked by one generic
//! property, `record_holds`, and kept a complete list by `every_record_type_is_checked`)
//! round-trips, and random bytes, or valid encodings cut, spliced and bit-flipped, decode to
//! an error or to a value, never a panic; a value decoded from hostile bytes encodes to
//! bytes that decode to it again. (The wire header and extent
//! lists have the same properties in transport's wire module, layouts' binary form in
//! layout's property tests.)
#![allow(clippy::unwrap_used)]

use nacre::codec::{CodecError, Record};
use nacre::layout::StripeSpec;
use nacre::meta::proto::MetaRequest;
use nacre::meta::repo::{AssocState, Association, RepoFile};
use nacre::meta::task::{Task, TaskCounts, TaskFailure, TaskKind, TaskState};
use nacre::meta::types::{
    Access, Attr, ComponentSpec, Cred, DirEntry, FileType, LayoutSpec, MAX_INO,
    MODE_PERMISSION_BITS, StatFs, TargetInfo, TimeSet,
};
use proptest::prelude::*;

fn path() -> impl Strategy<Value = String> {
    "(/[a-z0-9._-]{1,12}){0,4}".prop_map(|p| if p.is_empty() { "/".into() } else { p })
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,40}"
}

fn cred() -> impl Strategy<Value = Cred> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..20),
    )
        .prop_map(|(uid, gid, groups)| Cred { uid, gid, groups })
}

fn spec() -> impl Strategy<Value = LayoutSpec> {
    let component = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<i32>(),
        any::<i64>(),
        proptest::option::of("[a-z]{1,15}"),
        any::<bool>(),
    )
        .prop_map(
            |(start, end, size, count, index, pool, over)| ComponentSpec {
                start_bytes: start,
                end_bytes: end,
                stripe: StripeSpec {
                    stripe_size_bytes: size,
                    stripe_count: count,
                    stripe_index: index,
                    pool,
                    overstriping: over,
                },
            },
        );
    prop::collection::vec(component, 1..4).prop_map(|components| LayoutSpec { components })
}

fn target_info() -> impl Strategy<Value = TargetInfo> {
    (
        any::<u32>(),
        "[0-9a-f-]{1,36}",
        "tcp://[a-z0-9.]{1,20}:[0-9]{1,5}",
        prop::collection::vec("[a-z]{1,15}", 0..4),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(target_id, uuid, endpoint, pools, capacity_bytes, free_bytes)| TargetInfo {
                target_id,
                uuid,
                endpoint,
                pools,
                capacity_bytes,
                free_bytes,
            },
        )
}

fn access() -> impl Strategy<Value = Access> {
    prop::sample::select(vec![Access::Read, Access::Write, Access::ReadWrite])
}

/// The data repository task requests, the close notice and the release.
fn task_request() -> impl Strategy<Value = MetaRequest> {
    use nacre::meta::store::TaskEnd;
    let kind = task_kind();
    let end = prop_oneof![
        Just(None),
        (
            "[a-z ]{0,20}",
            prop_oneof![Just(TaskState::Succeeded), Just(TaskState::Failed)]
        )
            .prop_map(|(message, state)| Some(TaskEnd { state, message })),
    ];
    let failure = task_failure();
    prop_oneof![
        (kind, prop::collection::vec(path(), 0..4))
            .prop_map(|(kind, paths)| MetaRequest::TaskCreate { kind, paths }),
        any::<u64>().prop_map(|after| MetaRequest::TaskList { after }),
        any::<u64>().prop_map(|id| MetaRequest::TaskShow { id }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, from)| MetaRequest::TaskReport { id, from }),
        any::<u64>().prop_map(|id| MetaRequest::TaskCancel { id }),
        Just(MetaRequest::TaskClaim),
        (
            any::<u64>(),
            task_counts(),
            prop::collection::vec(failure, 0..3),
            end
        )
            .prop_map(|(id, counts, failures, end)| {
                MetaRequest::TaskUpdate {
                    id,
                    counts,
                    failures,
                    end,
                }
            }),
        (path(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(path, ino, instance, wrote)| MetaRequest::Closed {
                path,
                ino,
                instance,
                wrote
            }
        ),
        (path(), 0..=nacre::limits::MAX_RELEASE_IDLE_DAYS)
            .prop_map(|(path, idle_days)| MetaRequest::Release { path, idle_days }),
        (path(), any::<u32>(), any::<u32>()).prop_map(|(path, set, clear)| MetaRequest::HsmSet {
            path,
            set,
            clear
        }),
        (any::<u32>(), prop::collection::vec("[ -~]{0,40}", 0..5))
            .prop_map(|(repo, keys)| MetaRequest::KeysLinked { repo, keys }),
    ]
}

fn task_kind() -> impl Strategy<Value = TaskKind> {
    prop_oneof![
        Just(TaskKind::Import),
        Just(TaskKind::Export),
        Just(TaskKind::Restore),
        Just(TaskKind::AutoExport),
        (0..=nacre::limits::MAX_RELEASE_IDLE_DAYS)
            .prop_map(|idle_days| TaskKind::Release { idle_days }),
    ]
}

fn task_failure() -> impl Strategy<Value = TaskFailure> {
    (path(), "[A-Za-z]{1,16}", "[ -~]{0,40}").prop_map(|(path, code, message)| TaskFailure {
        path,
        code,
        message,
    })
}

fn task_counts() -> impl Strategy<Value = TaskCounts> {
    (any::<[u64; 4]>(), "[ -~]{0,40}").prop_map(|([total, done, failed, bytes], summary)| {
        TaskCounts {
            total,
            done,
            failed,
            bytes,
            summary,
        }
    })
}

fn task() -> impl Strategy<Value = Task> {
    let state = prop::sample::select(vec![
        TaskState::Pending,
        TaskState::Executing,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Canceled,
    ]);
    (
        (any::<u64>(), task_kind(), any::<u32>()),
        prop::collection::vec(path(), 0..4),
        (state, any::<bool>(), any::<[i64; 3]>()),
        task_counts(),
        ("[ -~]{0,40}", any::<u32>()),
    )
        .prop_map(
            |(
                (id, kind, owner),
                paths,
                (state, cancel_requested, [created_ns, started_ns, ended_ns]),
                counts,
                (message, reported),
            )| Task {
                id,
                kind,
                owner,
                paths,
                state,
                cancel_requested,
                created_ns,
                started_ns,
                ended_ns,
                counts,
                message,
                reported,
            },
        )
}

fn association() -> impl Strategy<Value = Association> {
    let state = prop::sample::select(vec![
        AssocState::Creating,
        AssocState::Available,
        AssocState::Misconfigured,
        AssocState::Failed,
    ]);
    (
        (
            any::<u32>(),
            path(),
            "[a-z0-9.-]{3,20}",
            "([a-z0-9]{1,8}/){0,3}",
        ),
        (
            proptest::option::of("http://[a-z.]{1,20}:[0-9]{2,5}"),
            proptest::option::of("[a-z0-9-]{1,12}"),
        ),
        nacre::limits::MIN_REPO_CHUNK_BYTES..=nacre::limits::MAX_REPO_CHUNK_BYTES,
        (any::<u8>(), any::<u8>(), state, "[ -~]{0,40}"),
    )
        .prop_map(
            |(
                (id, path, bucket, prefix),
                (endpoint, region),
                chunk_bytes,
                (auto_import, auto_export, state, reason),
            )| Association {
                id,
                path,
                bucket,
                prefix,
                endpoint,
                region,
                chunk_bytes,
                auto_import,
                auto_export,
                state,
                reason,
            },
        )
}

fn repo_file() -> impl Strategy<Value = RepoFile> {
    // A size of `chunks` chunks of `chunk_bytes`, the last one `short` bytes short of whole,
    // and a presence bit per chunk.
    (1u64..=(1 << 30), 0u64..=2000, any::<u64>())
        .prop_flat_map(|(chunk_bytes, chunks, short)| {
            let size = (chunks * chunk_bytes).saturating_sub(short % chunk_bytes);
            let bits = size.div_ceil(chunk_bytes).div_ceil(8) as usize;
            (
                (
                    any::<u32>(),
                    "[ -~]{0,60}",
                    "[0-9a-f\"]{0,34}",
                    any::<u32>(),
                ),
                Just((size, chunk_bytes)),
                prop::collection::vec(any::<u8>(), bits),
            )
        })
        .prop_map(
            |((repo, key, etag, flags), (size, chunk_bytes), present)| RepoFile {
                repo,
                key,
                etag,
                size,
                chunk_bytes,
                flags,
                present,
            },
        )
}

fn dir_entry() -> impl Strategy<Value = DirEntry> {
    (name(), any::<u64>(), 0..3usize).prop_map(|(name, ino, kind)| DirEntry {
        name,
        ino,
        file_type: [FileType::File, FileType::Dir, FileType::Symlink][kind],
    })
}

fn statfs() -> impl Strategy<Value = StatFs> {
    any::<[u64; 5]>().prop_map(
        |[files, dirs, free_inodes, capacity_bytes, free_bytes]| StatFs {
            files,
            dirs,
            free_inodes,
            capacity_bytes,
            free_bytes,
        },
    )
}

/// The records of the metadata service checked by [`record_holds`]: every type that
/// implements [`Record`] (`every_record_type_is_checked` keeps the list whole).
const RECORDS_CHECKED: [&str; 10] = [
    "Cred",
    "LayoutSpec",
    "Attr",
    "TargetInfo",
    "DirEntry",
    "StatFs",
    "Association",
    "RepoFile",
    "Task",
    "TaskFailure",
];

/// What every record promises: it round-trips; every strict prefix of its bytes, and its
/// bytes with one more after them, are errors naming it; and edited bytes or any bytes
/// decode to an error or to a value that encodes to bytes decoding to it again.
fn record_holds<R: Record + PartialEq + std::fmt::Debug>(
    value: &R,
    edits: &[Edit],
    noise: &[u8],
) -> Result<(), TestCaseError> {
    let bytes = value.to_bytes();
    prop_assert_eq!(
        &R::from_bytes(&bytes).unwrap(),
        value,
        "{} round trip",
        R::NAME
    );
    for cut in 0..bytes.len() {
        let err = R::from_bytes(&bytes[..cut]);
        prop_assert!(
            err.is_err(),
            "{}: {cut} of {} bytes decoded",
            R::NAME,
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert!(
        R::from_bytes(&longer).is_err(),
        "{}: a trailing byte was taken",
        R::NAME
    );
    let mut edited = bytes;
    apply(&mut edited, edits);
    stable(&edited, R::from_bytes, R::to_bytes)?;
    stable(noise, R::from_bytes, R::to_bytes)
}

/// Every kind of metadata request, with any field values.
fn request() -> impl Strategy<Value = MetaRequest> {
    prop_oneof![
        path().prop_map(|path| MetaRequest::Lookup { path }),
        (path(), any::<u32>()).prop_map(|(path, mode)| MetaRequest::Mkdir { path, mode }),
        (
            path(),
            any::<u32>(),
            any::<bool>(),
            proptest::option::of(spec())
        )
            .prop_map(|(path, mode, exclusive, layout)| MetaRequest::Create {
                path,
                mode,
                exclusive,
                layout
            }),
        (path(), access()).prop_map(|(path, access)| MetaRequest::Open { path, access }),
        (path(), proptest::option::of(name()), any::<u32>())
            .prop_map(|(path, after, max)| MetaRequest::Readdir { path, after, max }),
        path().prop_map(|path| MetaRequest::Unlink { path }),
        path().prop_map(|path| MetaRequest::Rmdir { path }),
        path().prop_map(|path| MetaRequest::Stat { path }),
        (path(), path()).prop_map(|(path, target)| MetaRequest::Symlink { path, target }),
        (path(), path()).prop_map(|(from, to)| MetaRequest::Rename { from, to }),
        (path(), path()).prop_map(|(from, to)| MetaRequest::Link { from, to }),
        (path(), time_set(), time_set(), any::<bool>()).prop_map(|(path, atime, mtime, follow)| {
            MetaRequest::SetTimes {
                path,
                atime,
                mtime,
                follow,
            }
        }),
        (path(), proptest::option::of(spec()))
            .prop_map(|(path, spec)| MetaRequest::SetDefaultLayout { path, spec }),
        (path(), spec(), any::<u32>())
            .prop_map(|(path, spec, mode)| MetaRequest::SetLayoutOnNewFile { path, spec, mode }),
        (path(), any::<u32>()).prop_map(|(path, mode)| MetaRequest::Chmod { path, mode }),
        (
            path(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            any::<bool>()
        )
            .prop_map(|(path, uid, gid, follow)| MetaRequest::Chown {
                path,
                uid,
                gid,
                follow
            }),
        (target_info(), proptest::option::of("[0-9a-f-]{36}"))
            .prop_map(|(info, filesystem)| MetaRequest::RegisterTarget { info, filesystem }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(target_id, capacity_bytes, free_bytes)| MetaRequest::Usage {
                target_id,
                capacity_bytes,
                free_bytes
            }
        ),
        proptest::option::of(any::<u32>()).prop_map(|after| MetaRequest::Targets { after }),
        Just(MetaRequest::Statfs),
        task_request(),
        repo_request(),
    ]
}

/// The data repository requests: associations, imports, HSM state, hydration, archiving.
fn repo_request() -> impl Strategy<Value = MetaRequest> {
    use nacre::limits::{MAX_REPO_CHUNK_BYTES, MIN_REPO_CHUNK_BYTES};
    use nacre::meta::repo::{AssocState, Association, ImportedFile};
    let state = prop::sample::select(vec![
        AssocState::Creating,
        AssocState::Available,
        AssocState::Misconfigured,
        AssocState::Failed,
    ]);
    let assoc = (
        (
            any::<u32>(),
            path(),
            "[a-z0-9.-]{3,20}",
            "([a-z0-9/]{1,20}/)?",
        ),
        (
            proptest::option::of("http://[a-z0-9.:]{1,20}"),
            proptest::option::of("[a-z0-9-]{1,12}"),
        ),
        (
            MIN_REPO_CHUNK_BYTES..=MAX_REPO_CHUNK_BYTES,
            any::<u8>(),
            any::<u8>(),
            state.clone(),
            "[ -~]{0,40}",
        ),
    )
        .prop_map(
            |(
                (id, path, bucket, prefix),
                (endpoint, region),
                (chunk_bytes, auto_import, auto_export, state, reason),
            )| Association {
                id,
                path,
                bucket,
                prefix,
                endpoint,
                region,
                chunk_bytes,
                auto_import,
                auto_export,
                state,
                reason,
            },
        );
    let imported = (
        (path(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<i64>(), any::<i64>(), any::<u32>()),
        ("[ -~]{1,60}", "\"[0-9a-f]{32}\"", any::<u64>()),
    )
        .prop_map(
            |((path, mode, uid, gid), (atime_ns, mtime_ns, repo), (key, etag, size))| {
                ImportedFile {
                    path,
                    mode,
                    uid,
                    gid,
                    atime_ns,
                    mtime_ns,
                    repo,
                    key,
                    etag,
                    size,
                }
            },
        );
    prop_oneof![
        assoc.prop_map(|assoc| MetaRequest::RepoLink { assoc }),
        Just(MetaRequest::RepoList),
        path().prop_map(|path| MetaRequest::RepoUnlink { path }),
        (path(), state, "[ -~]{0,40}").prop_map(|(path, state, reason)| {
            MetaRequest::RepoSetState {
                path,
                state,
                reason,
            }
        }),
        (imported, proptest::option::of(path())).prop_map(|(file, target)| match target {
            Some(target) => MetaRequest::ImportSymlink { file, target },
            None => MetaRequest::ImportFile { file },
        }),
        path().prop_map(|path| MetaRequest::HsmState { path }),
        (path(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(path, ino, offset, len)| {
            MetaRequest::Hydrate {
                path,
                ino,
                offset,
                len,
            }
        }),
        (
            path(),
            any::<u32>(),
            "[ -~]{1,60}",
            "\"[0-9a-f]{32}-[0-9]{1,3}\"",
            any::<u64>()
        )
            .prop_map(|(path, repo, key, etag, size)| MetaRequest::Archived {
                path,
                repo,
                key,
                etag,
                size
            }),
    ]
}

fn time_set() -> impl Strategy<Value = TimeSet> {
    prop_oneof![
        Just(TimeSet::Omit),
        Just(TimeSet::Now),
        any::<i64>().prop_map(TimeSet::At),
    ]
}

fn attr() -> impl Strategy<Value = Attr> {
    (
        1..=MAX_INO,
        0..3u8,
        0..=MODE_PERMISSION_BITS,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<(i64, i64, i64)>(),
        proptest::option::of(spec()),
    )
        .prop_map(
            |(ino, kind, mode, uid, gid, nlink, (atime_ns, mtime_ns, ctime_ns), default_layout)| {
                let file_type = [FileType::File, FileType::Dir, FileType::Symlink][kind as usize];
                let symlink = (file_type == FileType::Symlink).then(|| format!("../t{ino}"));
                Attr {
                    ino,
                    file_type,
                    mode,
                    uid,
                    gid,
                    nlink,
                    atime_ns,
                    mtime_ns,
                    ctime_ns,
                    layout: None,
                    default_layout,
                    symlink,
                }
            },
        )
}

/// A hostile edit of a valid encoding: a bit flipped, a byte set, a cut, bytes spliced in,
/// or a length-like field (any 4 bytes) set to an extreme.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Cut(usize),
    Splice(usize, Vec<u8>),
    Huge(usize, u32),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Splice(at, bytes)),
        (
            any::<usize>(),
            prop::sample::select(vec![u32::MAX, u32::MAX / 2, 1 << 20, 65_536])
        )
            .prop_map(|(at, v)| Edit::Huge(at, v)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::Flip(at, bit) if len > 0 => bytes[at % len] ^= 1 << bit,
            Edit::Set(at, b) if len > 0 => bytes[at % len] = *b,
            Edit::Cut(at) => bytes.truncate(at % (len + 1)),
            Edit::Splice(at, more) => {
                let at = at % (len + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Edit::Huge(at, v) if len >= 4 => {
                let at = at % (len - 3);
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Decodes `bytes` with `decode`; what decodes must encode to bytes that decode to the
/// same value.
fn stable<T: PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<(), TestCaseError> {
    if let Ok(value) = decode(bytes) {
        let again = decode(&encode(&value));
        prop_assert_eq!(again.as_ref().ok(), Some(&value));
    }
    Ok(())
}

fn encode_request(cred: &Cred, request: &MetaRequest) -> Vec<u8> {
    let mut body = Vec::new();
    request.encode(cred, &mut body);
    body
}

fn decode_request(body: &[u8]) -> Result<(Cred, MetaRequest), CodecError> {
    MetaRequest::decode(body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_metadata_request_round_trips(cred in cred(), request in request()) {
        // Credentials keep at most MAX_GROUPS groups (the rest are cut when sent).
        let body = encode_request(&cred, &request);
        let (back_cred, back) = decode_request(&body).unwrap();
        prop_assert_eq!(back, request);
        prop_assert_eq!(back_cred.uid, cred.uid);
        prop_assert_eq!(back_cred.gid, cred.gid);
    }

    #[test]
    fn edited_metadata_requests_never_panic(cred in cred(), request in request(), edits in edits()) {
        let mut body = encode_request(&cred, &request);
        apply(&mut body, &edits);
        stable(&body, decode_request, |(c, r)| encode_request(c, r))?;
    }

    #[test]
    fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        stable(&body, decode_request, |(c, r)| encode_request(c, r))?;
    }

    #[test]
    fn namespace_records_hold(
        cred in cred(),
        spec in spec(),
        attr in attr(),
        info in target_info(),
        entry in dir_entry(),
        statfs in statfs(),
        edits in edits(),
        noise in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        record_holds(&cred, &edits, &noise)?;
        record_holds(&spec, &edits, &noise)?;
        record_holds(&attr, &edits, &noise)?;
        record_holds(&info, &edits, &noise)?;
        record_holds(&entry, &edits, &noise)?;
        record_holds(&statfs, &edits, &noise)?;
    }

    #[test]
    fn repository_records_hold(
        association in association(),
        file in repo_file(),
        task in task(),
        failure in task_failure(),
        edits in edits(),
        noise in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        record_holds(&association, &edits, &noise)?;
        record_holds(&file, &edits, &noise)?;
        record_holds(&task, &edits, &noise)?;
        record_holds(&failure, &edits, &noise)?;
    }
}

/// Every type the engine makes a record (`whole_record!` in its sources) is one the
/// property tests above check: a new record cannot miss them.
#[test]
fn every_record_type_is_checked() {
    let mut found = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in text.split("\nwhole_record!(").skip(1) {
                    found.push(call.split(',').next().unwrap().trim().to_owned());
                }
            }
        }
    }
    found.sort();
    let mut checked: Vec<String> = RECORDS_CHECKED.iter().map(|s| s.to_string()).collect();
    checked.sort();
    assert_eq!(
        found, checked,
        "records in core/src against those the tests check"
    );
}
