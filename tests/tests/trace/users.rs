//! The writer's user: two users writing one file through their own
//! mappings, `--user`, ids changed between two writes, the login uid kept
//! across sudo.

use std::path::Path;

use integration_tests::{path_arg, ranges, require_root, scratch_dir, trace_command, TestUser};
use serde_json::Value;

/// Forks one child per `uid:gid:pages` argument; each drops to its ids and
/// only then maps the file (opened by the parent, so the users need no
/// access to the scratch directory) and stores into its pages.
const TWO_USERS: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
children = []
for spec in sys.argv[2:]:
    uid, gid, pages = spec.split(":")
    pid = os.fork()
    if pid == 0:
        os.setgroups([])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
        m = mmap.mmap(fd, 16 * 4096, mmap.MAP_SHARED)
        for page in pages.split(","):
            m[int(page) * 4096] = 1
        m.flush()
        os._exit(0)
    children.append(pid)
for pid in children:
    assert os.waitpid(pid, 0)[1] == 0
"#;

/// Stores into page 1 as root, changes to `uid:gid` with setresuid, then
/// stores into page 9 through the same mapping.
const IDS_CHANGED: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 16 * 4096, mmap.MAP_SHARED)
m[1 * 4096] = 1
uid, gid = (int(x) for x in sys.argv[2].split(":"))
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
m[9 * 4096] = 1
m.flush()
"#;

/// Sets its login uid (as `pam_loginuid` does at a login), then runs the
/// rest of its arguments: the login uid stays whatever that changes to.
const LOGIN_THEN: &str = r#"
import os, sys
with open("/proc/self/loginuid", "w") as f:
    f.write(sys.argv[1])
os.execvp(sys.argv[2], sys.argv[2:])
"#;

/// Stores into page 4 of the file through its own mapping.
const ONE_STORE: &str = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 16 * 4096, mmap.MAP_SHARED)
m[4 * 4096] = 1
m.flush()
"#;

/// A sparse file of 16 pages: no page cache yet, so each store faults its
/// own page (data written first would sit in one large folio, mapped
/// writable whole by the first store).
fn shared_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(16 * 4096))
        .unwrap();
    file
}

fn python(script: &str, file: &Path, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["-c".to_string(), script.to_string(), path_arg(file)];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

fn trace_python(extra: &[&str], args: &[String]) -> integration_tests::TraceRun {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    trace_command("python3", extra, &args)
}

/// The writers of `file` with `uid`, and the pages each wrote.
fn writers_with_uid(entry: &Value, uid: u32) -> Vec<&Value> {
    entry["writers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["uid"].as_u64() == Some(u64::from(uid)))
        .collect()
}

fn assert_ids(writer: &Value, user: &TestUser) {
    for key in ["uid", "euid"] {
        assert_eq!(writer[key], user.uid, "{key}: {writer}");
    }
    for key in ["gid", "egid"] {
        assert_eq!(writer[key], user.gid, "{key}: {writer}");
    }
    match &user.name {
        Some(name) => assert_eq!(writer["user"], name.as_str(), "{writer}"),
        None => assert_eq!(writer["user"], Value::Null, "{writer}"),
    }
}

#[test]
fn two_users_writing_one_file_are_each_credited_with_their_pages() {
    require_root();
    let (alice, bob) = (TestUser::new("a", 61_001), TestUser::new("b", 61_002));
    let dir = scratch_dir();
    let file = shared_file(dir.path(), "two-users.bin");
    let args = python(
        TWO_USERS,
        &file,
        &[
            &format!("{}:1,2", alice.spec()),
            &format!("{}:5,6,7", bob.spec()),
        ],
    );
    let run = trace_python(&["--path-prefix", &path_arg(dir.path())], &args);
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 2), (5, 7)]);
    for (user, pages) in [(&alice, 2), (&bob, 3)] {
        let writers = writers_with_uid(entry, user.uid);
        assert_eq!(writers.len(), 1, "{entry}");
        assert_eq!(writers[0]["pages"], pages, "{entry}");
        assert_ids(writers[0], user);
    }
    assert_eq!(entry["writers"].as_array().unwrap().len(), 2, "{entry}");

    // --user: exactly one user's pages, by name (or uid) and by uid.
    for selector in [alice.arg(), alice.uid.to_string()] {
        let run = trace_python(
            &["--path-prefix", &path_arg(dir.path()), "--user", &selector],
            &args,
        );
        assert!(run.status.success(), "{}", run.stderr);
        let entry = run.expect_file(&file);
        assert_eq!(
            ranges(&entry["pages_written"]),
            vec![(1, 2)],
            "--user {selector}"
        );
        let writers = entry["writers"].as_array().unwrap();
        assert_eq!(writers.len(), 1, "{entry}");
        assert_ids(&writers[0], &alice);
    }
}

#[test]
fn a_process_whose_ids_change_between_two_writes_is_two_writers() {
    require_root();
    let carol = TestUser::new("c", 61_003);
    let dir = scratch_dir();
    let file = shared_file(dir.path(), "setresuid.bin");
    let run = trace_python(
        &["--path-prefix", &path_arg(dir.path())],
        &python(IDS_CHANGED, &file, &[&carol.spec()]),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(1, 1), (9, 9)]);
    let writers = entry["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 2, "{entry}");
    assert_eq!(writers[0]["pid"], writers[1]["pid"], "one process: {entry}");
    let as_root = writers_with_uid(entry, 0);
    assert_eq!(as_root.len(), 1, "{entry}");
    assert_eq!(
        (&as_root[0]["euid"], &as_root[0]["pages"]),
        (&0.into(), &1.into())
    );
    assert_eq!(as_root[0]["user"], "root");
    let as_carol = writers_with_uid(entry, carol.uid);
    assert_eq!(as_carol.len(), 1, "{entry}");
    assert_eq!(as_carol[0]["pages"], 1);
    assert_ids(as_carol[0], &carol);
}

#[test]
fn the_login_uid_is_kept_across_sudo() {
    require_root();
    let (dave, erin) = (TestUser::new("d", 61_004), TestUser::new("e", 61_005));
    let dir = scratch_dir();
    let file = shared_file(dir.path(), "sudo.bin");
    // The file is erin's: sudo's child opens it itself.
    std::os::unix::fs::chown(&file, Some(erin.uid), Some(erin.gid)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    // sudo where the users have names; a guest's bare uids are not ones
    // sudo runs as, and setpriv changes ids the same way.
    let switch: Vec<String> = match &erin.name {
        Some(name) => vec!["sudo".into(), "-u".into(), name.clone(), "--".into()],
        None => vec![
            "setpriv".into(),
            format!("--reuid={}", erin.uid),
            format!("--regid={}", erin.gid),
            "--clear-groups".into(),
        ],
    };
    let mut rest = vec![dave.uid.to_string()];
    rest.extend(switch);
    rest.extend([
        "python3".into(),
        "-c".into(),
        ONE_STORE.into(),
        path_arg(&file),
    ]);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let mut args = vec!["-c", LOGIN_THEN];
    args.extend(rest);
    let run = trace_command("python3", &["--path-prefix", &path_arg(dir.path())], &args);
    assert!(run.status.success(), "{}", run.stderr);
    let entry = run.expect_file(&file);
    assert_eq!(ranges(&entry["pages_written"]), vec![(4, 4)]);
    let writers = entry["writers"].as_array().unwrap();
    assert_eq!(writers.len(), 1, "{entry}");
    assert_ids(&writers[0], &erin);
    assert_eq!(writers[0]["loginuid"], dave.uid, "who logged in: {entry}");
}
