//! Hostile bytes against the engine's decoders: every metadata request and every record the
//! metadata service keeps or sends (attributes, layouts requested, targets, directory
//! entries, credentials, counts) round-trips, and random bytes, or valid encodings cut,
//! spliced and bit-flipped, decode to an error or to a value, never a panic; a value decoded
//! from hostile bytes encodes to bytes that decode to it again. (The wire header and extent
//! lists have the same properties in transport's wire module, layouts' binary form in
//! layout's property tests.)
#![allow(clippy::unwrap_used)]

use nacre::codec::CodecError;
use nacre::layout::StripeSpec;
use nacre::meta::proto::MetaRequest;
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
    use nacre::meta::task::{TaskCounts, TaskFailure, TaskKind, TaskState};
    let kind = prop_oneof![
        Just(TaskKind::Import),
        Just(TaskKind::Export),
        Just(TaskKind::Restore),
        Just(TaskKind::AutoExport),
        (0..=nacre::limits::MAX_RELEASE_IDLE_DAYS)
            .prop_map(|idle_days| TaskKind::Release { idle_days }),
    ];
    let end = prop_oneof![
        Just(None),
        (
            "[a-z ]{0,20}",
            prop_oneof![Just(TaskState::Succeeded), Just(TaskState::Failed)]
        )
            .prop_map(|(message, state)| Some(TaskEnd { state, message })),
    ];
    let failure =
        (path(), "[A-Za-z]{1,16}", "[ -~]{0,40}").prop_map(|(path, code, message)| TaskFailure {
            path,
            code,
            message,
        });
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
            any::<[u64; 4]>(),
            "[ -~]{0,40}",
            prop::collection::vec(failure, 0..3),
            end
        )
            .prop_map(
                |(id, [total, done, failed, bytes], summary, failures, end)| {
                    MetaRequest::TaskUpdate {
                        id,
                        counts: TaskCounts {
                            total,
                            done,
                            failed,
                            bytes,
                            summary,
                        },
                        failures,
                        end,
                    }
                }
            ),
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
        stable(&body, Attr::from_bytes, Attr::to_bytes)?;
        stable(&body, TargetInfo::from_bytes, TargetInfo::to_bytes)?;
        stable(&body, DirEntry::from_bytes, DirEntry::to_bytes)?;
        stable(&body, Cred::from_bytes, Cred::to_bytes)?;
        stable(&body, StatFs::from_bytes, StatFs::to_bytes)?;
    }

    #[test]
    fn records_round_trip_and_survive_edits(
        attr in attr(),
        info in target_info(),
        entry in (name(), any::<u64>(), any::<bool>()),
        edits in edits(),
    ) {
        let entry = DirEntry {
            name: entry.0,
            ino: entry.1,
            file_type: if entry.2 { FileType::Dir } else { FileType::File },
        };
        prop_assert_eq!(Attr::from_bytes(&attr.to_bytes()).unwrap(), attr.clone());
        prop_assert_eq!(TargetInfo::from_bytes(&info.to_bytes()).unwrap(), info.clone());
        prop_assert_eq!(DirEntry::from_bytes(&entry.to_bytes()).unwrap(), entry.clone());
        let mut bytes = attr.to_bytes();
        apply(&mut bytes, &edits);
        stable(&bytes, Attr::from_bytes, Attr::to_bytes)?;
        let mut bytes = info.to_bytes();
        apply(&mut bytes, &edits);
        stable(&bytes, TargetInfo::from_bytes, TargetInfo::to_bytes)?;
        let mut bytes = entry.to_bytes();
        apply(&mut bytes, &edits);
        stable(&bytes, DirEntry::from_bytes, DirEntry::to_bytes)?;
    }
}
