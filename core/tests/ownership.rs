//! A target directory belongs to one file system and is served by one process at a time.
//! Before, a second server of a directory took its registration over (two clients then lost
//! about half of 3,000 acknowledged writes to shared blocks), and a directory formatted for
//! one cluster was taken into another, whose new files read back the first one's objects
//! (object ids come from inode numbers, which every file system starts from the same place).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, TempDir, fill, stripes, target_config};
use nacre::io::Target;
use nacre::{MetaServer, TargetServer};

#[test]
fn a_second_server_of_a_target_directory_is_refused_by_name() {
    let cluster = Cluster::start("one-server", 1);
    let dir = cluster.target_dir(0);
    let config = target_config(&cluster.meta_addr, "tcp://127.0.0.1:0");
    let e = TargetServer::start(&dir, &config).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("is served by another process already")
            && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert_eq!(e.errno(), libc::EBUSY, "{message}");
    // The first server goes on serving, and once it has stopped the directory may be served
    // again.
    let client = cluster.client();
    let file = client
        .create("/still", 0o644, Some(stripes(1, 64 * 1024)))
        .unwrap();
    file.write_at(b"served", 0).unwrap();
    let mut cluster = cluster;
    let server = cluster.targets[0].take().unwrap();
    let listen = server.endpoint().to_string();
    server.stop();
    let again = TargetServer::start(&dir, &target_config(&cluster.meta_addr, &listen)).unwrap();
    let mut back = [0u8; 6];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), 6);
    assert_eq!(&back, b"served");
    again.stop();
}

#[test]
fn a_target_of_another_file_system_is_refused_at_registration() {
    let cluster = Cluster::start("fs-a", 1);
    let dir_a = cluster.target_dir(0);
    let client = cluster.client();
    let file = client
        .create("/a", 0o644, Some(stripes(1, 64 * 1024)))
        .unwrap();
    let data = fill(3, 0, 100_000);
    file.write_at(&data, 0).unwrap();
    let fs_a = Target::open(&dir_a)
        .unwrap()
        .filesystem()
        .expect("bound at registration");
    drop((file, client));
    // Another file system: a metadata service of its own, and a target of its own.
    let other = TempDir::new("fs-b");
    let meta_b = MetaServer::start(&other.0.join("meta.redb"), "tcp://127.0.0.1:0").unwrap();
    let addr_b = meta_b.endpoint().to_string();
    let config_b = target_config(&addr_b, "tcp://127.0.0.1:0");
    let mut cluster = cluster;
    cluster.targets[0].take().unwrap().stop();
    let e = TargetServer::start(&dir_a, &config_b).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("belongs to file system")
            && message.contains(&nacre::io::uuid_text(&fs_a)),
        "{message}"
    );
    assert_eq!(e.errno(), libc::EEXIST, "{message}");
    // Its own target serves it; a new file there reads as the empty file it is.
    let dir_b = other.0.join("t0");
    Target::format(&dir_b, 0).unwrap();
    let target_b = TargetServer::start(&dir_b, &config_b).unwrap();
    let fs_b = Target::open(&dir_b).unwrap().filesystem().unwrap();
    assert_ne!(fs_a, fs_b, "two file systems, two uuids");
    let client_b = nacre::Client::connect(&addr_b).unwrap();
    let fresh = client_b
        .create("/a", 0o644, Some(stripes(1, 64 * 1024)))
        .unwrap();
    assert_eq!(fresh.size().unwrap(), 0);
    let mut back = vec![0u8; 4096];
    assert_eq!(fresh.read_at(&mut back, 0).unwrap(), 0);
    // And A's target, back with A, still holds A's bytes.
    drop((fresh, client_b));
    target_b.stop();
    meta_b.stop();
    cluster.targets[0] = Some(
        TargetServer::start(
            &dir_a,
            &target_config(&cluster.meta_addr, "tcp://127.0.0.1:0"),
        )
        .unwrap(),
    );
    let file = cluster
        .client()
        .open("/a", &nacre::OpenOptions::new().read(true))
        .unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data);
}

/// Object ids are never reused: a file made after another was removed gets objects of its
/// own, never the removed file's.
#[test]
fn object_ids_are_not_reused_after_removal() {
    let cluster = Cluster::start("no-reuse", 2);
    let client = cluster.client();
    let mut seen = std::collections::HashSet::new();
    for round in 0..20 {
        let file = client
            .create("/again", 0o644, Some(stripes(-1, 64 * 1024)))
            .unwrap();
        let ino = file.attr().ino;
        assert!(seen.insert(ino), "round {round}: inode {ino} again");
        file.write_at(&fill(round, 0, 200_000), 0).unwrap();
        drop(file);
        client.unlink("/again").unwrap();
    }
}
