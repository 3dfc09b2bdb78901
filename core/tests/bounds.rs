//! What a legal namespace can hold never outgrows a reply: replies that grow with the data
//! (a directory's entries, the targets) page by bytes as well as by count, a layout too big
//! for one reply is refused by name when the file is made, and a reply that still would not
//! fit is an error for its requester, never a panic of the server. Before, `ls` of a
//! directory of 260 entries with 255-byte names killed the metadata service ("body of 69684
//! bytes").
#![allow(clippy::unwrap_used)]

mod common;

use common::Cluster;
use nacre::meta::link::{MetaLink, link_options};
use nacre::meta::proto::MetaRequest;
use nacre::meta::types::{ComponentSpec, Cred, LayoutSpec, TargetInfo};

/// The names in directory `dir`, in the order listed.
fn names(client: &nacre::Client, dir: &str) -> Vec<String> {
    client
        .readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

fn long_name(i: usize) -> String {
    let prefix = format!("{i:05}-");
    format!("{prefix}{}", "n".repeat(255 - prefix.len()))
}

#[test]
fn directories_of_long_names_list_whole_in_pages() {
    let cluster = Cluster::start("long-names", 1);
    let client = cluster.client();
    client.mkdir("/d", 0o755).unwrap();
    // 260 fill more than one 64 KiB page; 1,100 more than a page of 1,024 entries.
    for i in 0..1_100 {
        client
            .mkdir(&format!("/d/{}", long_name(i)), 0o755)
            .unwrap();
        if i == 259 {
            assert_eq!(
                names(&client, "/d"),
                (0..260).map(long_name).collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(
        names(&client, "/d"),
        (0..1_100).map(long_name).collect::<Vec<_>>()
    );
    // The service is still there.
    assert!(client.stat("/d").unwrap().attr.is_dir());
}

#[test]
fn many_targets_with_long_records_list_whole_in_pages() {
    let cluster = Cluster::start("many-targets", 1);
    let link = MetaLink::new(
        &cluster.meta_addr,
        link_options(std::time::Duration::from_secs(30)),
        1,
    )
    .unwrap();
    // Each record about 1.6 KiB: 60 of them are more than one reply holds.
    for id in 100..160u32 {
        let info = TargetInfo {
            target_id: id,
            uuid: format!("{id:064}"),
            endpoint: format!("tcp://{}.example:7401", "h".repeat(230)),
            pools: (0..64).map(|p| format!("pool{p:011}")).collect(),
            capacity_bytes: 0,
            free_bytes: 0,
        };
        link.call(
            &Cred::root(),
            &MetaRequest::RegisterTarget {
                info,
                filesystem: None,
            },
        )
        .unwrap();
    }
    let ids: Vec<u32> = cluster
        .client()
        .targets()
        .unwrap()
        .into_iter()
        .map(|t| t.target_id)
        .collect();
    let mut want = vec![0];
    want.extend(100..160);
    assert_eq!(ids, want);
}

#[test]
fn a_layout_too_big_for_one_reply_is_refused_by_name() {
    let cluster = Cluster::start("big-layout", 2);
    let client = cluster.client();
    let component = |start: u64, end: u64| ComponentSpec {
        start_bytes: start,
        end_bytes: end,
        stripe: nacre::layout::StripeSpec {
            stripe_count: 2000,
            stripe_size_bytes: 64 * 1024,
            overstriping: true,
            ..nacre::layout::StripeSpec::default()
        },
    };
    let spec = |components: u64| LayoutSpec {
        components: (0..components)
            .map(|c| {
                let end = if c + 1 == components {
                    u64::MAX
                } else {
                    (c + 1) << 30
                };
                component(c << 30, end)
            })
            .collect(),
    };
    // 8 components of 2,000 stripes: 64,000 bytes of target ids.
    let e = client.create("/wide", 0o644, Some(spec(8))).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(e.to_string().contains("travel in one message"), "{e}");
    // 7 fit, and the file's attributes come back whole.
    let file = client.create("/wide", 0o644, Some(spec(7))).unwrap();
    assert_eq!(file.layout().components().len(), 7);
    let stat = client.stat("/wide").unwrap();
    let stripes: usize = stat
        .attr
        .layout
        .unwrap()
        .components()
        .iter()
        .map(|c| c.stripe.target_ids().len())
        .sum();
    assert_eq!(stripes, 14_000);
}

/// A tmpfs of `size` mounted on the new directory `at`, unmounted on drop; `None` where this
/// machine does not let the test mount.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn tmpfs(at: &std::path::Path, size: &str) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status();
    matches!(status, Ok(s) if s.success()).then(|| Mounted(at.to_path_buf()))
}

/// The metadata service on a full device answers ENOSPC by name, changes nothing, and takes
/// changes again once there is room, without a restart. Before, it answered EIO, then
/// refused every later change ("Previous I/O error occurred") until restarted.
#[test]
fn a_full_disk_is_enospc_and_the_service_recovers_without_a_restart() {
    let dir = common::TempDir::new("full-disk");
    let mount = dir.0.join("small");
    let Some(_mounted) = tmpfs(&mount, "8M") else {
        eprintln!("SKIPPED: this machine does not let the test mount a tmpfs");
        return;
    };
    let meta = nacre::MetaServer::start(&mount.join("meta.redb"), "tcp://127.0.0.1:0").unwrap();
    let client = nacre::Client::connect(&meta.endpoint().to_string()).unwrap();
    client.mkdir("/before", 0o755).unwrap();
    // Ballast takes the rest of the device.
    let ballast = mount.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut made = Vec::new();
    let mut refused = None;
    for i in 0..100_000 {
        let path = format!("/d{i:06}-{}", "x".repeat(200));
        match client.mkdir(&path, 0o755) {
            Ok(_) => made.push(path),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the device filled up");
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(e.to_string().contains("no space left"), "{e}");
    // Still full: refused again by name, not with a stale I/O error.
    let e = client.mkdir("/still-full", 0o755).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    // Room again: changes go through once the store has opened its database again (at
    // most a second after its last try), and nothing acknowledged was lost.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match client.mkdir("/after", 0o755) {
            Ok(_) => break,
            Err(e) if e.errno() == libc::ENOSPC && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("after room was made: {e}"),
        }
    }
    let names = names(&client, "/");
    assert!(names.contains(&"before".to_string()) && names.contains(&"after".to_string()));
    for path in &made {
        assert!(
            names.contains(&path[1..].to_string()),
            "{path} was acknowledged and is gone"
        );
    }
    assert!(!names.contains(&"still-full".to_string()));
    drop(client);
    meta.stop();
}
