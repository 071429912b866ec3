//! TLS, basic auth and client certificates from a web config file, bad configs, and the capabilities the agent keeps.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{mmapwatch_bin, path_arg, require_root, scratch_dir, Workload};

use super::{wait_for, write_pages, Exporter, Prometheus, WORKLOAD};

/// A certificate authority and a server certificate for 127.0.0.1, and a
/// client certificate, made by openssl in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=mmapwatch test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ] {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        let extensions = format!("{name}.ext");
        std::fs::write(
            dir.join(&extensions),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{san}"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &extensions,
        ]);
    }
}

/// curl's HTTP status for /metrics (0: no HTTP answer at all).
fn curl_status(url: &str, extra: &[&str]) -> u16 {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `--web.config.file` in the exporter toolkit's format: a real
/// Prometheus scrapes over TLS with basic auth and sees the workload's
/// pages; without credentials, or with a wrong password, a scrape gets 401;
/// plain HTTP gets no answer; /healthz needs no password.
#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    require_root();
    let dir = scratch_dir();
    make_certificates(dir.path());
    let hash = bcrypt::hash("s3cret pass", 10).unwrap();
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prom: '{hash}'\n"),
    )
    .unwrap();
    let exporter = Exporter::start(&["--web.config.file", &path_arg(&web_config)]);
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    let ca = path_arg(&dir.path().join("ca.crt"));
    assert_eq!(curl_status(&url, &["--cacert", &ca]), 401);
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "prom:wrong"]),
        401
    );
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "eve:s3cret pass"]),
        401
    );
    assert_eq!(
        curl_status(&url, &["--cacert", &ca, "--user", "prom:s3cret pass"]),
        200
    );
    assert_eq!(curl_status(&url.replace("https", "http"), &[]), 0);
    assert_eq!(
        curl_status(&url.replace("/metrics", "/healthz"), &["--cacert", &ca]),
        200
    );

    let prometheus = Prometheus::start(
        dir.path(),
        exporter.port,
        &format!("    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prom\n      password: 's3cret pass'\n"),
    );
    prometheus.wait_until_up();
    let file = dir.path().join("over-tls.bin");
    write_pages(&file, 16, "0,5,9");
    let pages = r#"sum(mmapwatch_pages_first_written_total{comm="mw-workload",fs="ext4"})"#;
    wait_for(
        "the pages over TLS in Prometheus",
        Duration::from_secs(30),
        || prometheus.query(pages) == Some(3.0),
    );
}

/// `client_auth_type: RequireAndVerifyClientCert`: only a client holding a
/// certificate from the configured CA gets an answer.
#[test]
fn client_certificates_are_required_when_configured() {
    require_root();
    let dir = scratch_dir();
    make_certificates(dir.path());
    let web_config = dir.path().join("web.yml");
    std::fs::write(
        &web_config,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
    )
    .unwrap();
    let exporter = Exporter::start(&["--web.config.file", &path_arg(&web_config)]);
    let url = format!("https://127.0.0.1:{}/metrics", exporter.port);
    let file = |name: &str| path_arg(&dir.path().join(name));
    assert_eq!(curl_status(&url, &["--cacert", &file("ca.crt")]), 0);
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--cert",
                &file("client.crt"),
                "--key",
                &file("client.key")
            ]
        ),
        200
    );
    // The server's own certificate is no client certificate.
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--cert",
                &file("server.crt"),
                "--key",
                &file("server.key")
            ]
        ),
        0
    );
    assert_eq!(
        curl_status(
            &url,
            &[
                "--cacert",
                &file("ca.crt"),
                "--tls-max",
                "1.2",
                "--cert",
                &file("client.crt"),
                "--key",
                &file("client.key")
            ]
        ),
        0
    );
}

/// A bad web config is one line and exit 2, before anything is loaded.
#[test]
fn a_bad_web_config_is_one_line() {
    require_root();
    let dir = scratch_dir();
    let web_config = dir.path().join("web.yml");
    std::fs::write(&web_config, "basic_auth_users:\n  prom: plaintext\n").unwrap();
    integration_tests::expect_one_line_failure(
        Command::new(mmapwatch_bin()).args(["export", "--web.config.file", &path_arg(&web_config)]),
        2,
        "basic_auth_users.prom: not a bcrypt hash",
    );
    integration_tests::expect_one_line_failure(
        Command::new(mmapwatch_bin()).args(["export", "--web.config.file", "/nonexistent/web.yml"]),
        2,
        "--web.config.file /nonexistent/web.yml",
    );
}

/// After attaching, every thread of the agent holds only CAP_BPF,
/// CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE and CAP_DAC_READ_SEARCH (none to
/// regain: the bounding set is the same), and with them it still names
/// and counts a file that another user writes in a directory of its own.
#[test]
fn the_agent_keeps_only_the_capabilities_it_needs() {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    require_root();
    let dir = scratch_dir();
    let exporter = Exporter::start(&["--path-prefix", &path_arg(dir.path())]);
    // bits 2 (DAC_READ_SEARCH), 19 (SYS_PTRACE), 39 (BPF), 40 (CHECKPOINT_RESTORE)
    let expected: u64 = (1 << 2) | (1 << 19) | (1 << 39) | (1 << 40);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", exporter.child.id())).unwrap();
    let mut threads = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:")))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            let want = if matches!(set, "CapInh" | "CapAmb") {
                0
            } else {
                expected
            };
            assert_eq!(value, want, "{set} of a thread:\n{status}");
        }
        threads += 1;
    }
    assert!(threads >= 2, "the HTTP thread too");

    // nobody's own directory and a 0600 file in it, written by nobody.
    let private = dir.path().join("nobody");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&private, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = private.join("secret.bin");
    let status = Workload::new("shared", &file)
        .size_pages(8)
        .pages("1,6")
        .command(WORKLOAD)
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    exporter.wait_for_file_pages(&file, 2.0);
}
