//! The lifecycle and ch-remote's syntax through the chv-remote client.

use std::thread;
use std::time::{Duration, Instant};

use chv_tests::Chv;

use crate::harness::*;
use crate::http::*;

#[test]
fn lifecycle_with_chv_remote() {
    let dir = Scratch::new("remote");
    let serial = dir.join("serial.log");
    let config_file = dir.join("vm.json");
    std::fs::write(&config_file, ticker_config(&serial)).expect("write config");
    let config_arg = config_file.display().to_string();
    let (chv, sock) = start_vmm(&dir);

    let out = remote_ok(&chv, &sock, &["ping"]);
    let ping = parse_json(out.trim()).unwrap_or_else(|e| chv.fail(&format!("ping {out:?}: {e}")));
    chv.check(
        ping.get("pid") == Some(&Json::Num(f64::from(chv.pid()))),
        &format!("chv-remote ping: {out}"),
    );
    remote_err(&chv, &sock, &["info"], "404");
    remote_err(&chv, &sock, &["boot"], "404");
    remote_err(
        &chv,
        &sock,
        &["create", "/nonexistent/vm.json"],
        "cannot read",
    );

    chv.check(
        remote_ok(&chv, &sock, &["create", &config_arg]).is_empty(),
        "create prints nothing",
    );
    remote_err(&chv, &sock, &["create", &config_arg], "409");
    chv.check(
        remote_ok(&chv, &sock, &["boot"]).is_empty(),
        "boot prints nothing",
    );
    wait_file(&chv, &serial, "5 ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 5)
    });
    let info = |chv: &Chv| {
        let out = remote_ok(chv, &sock, &["info"]);
        match parse_json(out.trim())
            .ok()
            .and_then(|j| j.get("state").cloned())
        {
            Some(Json::Str(s)) => s,
            _ => chv.fail(&format!("chv-remote info printed {out:?}")),
        }
    };
    chv.check(info(&chv) == "Running", "info after boot");

    remote_ok(&chv, &sock, &["pause"]);
    expect_stalled(&chv, &serial, STALL, "after chv-remote pause");
    chv.check(info(&chv) == "Paused", "info after pause");
    remote_err(&chv, &sock, &["pause"], "405");
    remote_ok(&chv, &sock, &["resume"]);
    expect_growing(&chv, &serial, 20, "ticks after chv-remote resume");
    remote_err(&chv, &sock, &["resume"], "405");

    let out = remote_ok(&chv, &sock, &["counters"]);
    chv.check(
        matches!(parse_json(out.trim()), Ok(Json::Obj(_))),
        &format!("chv-remote counters printed {out:?}"),
    );

    remote_ok(&chv, &sock, &["reboot"]);
    wait_file(&chv, &serial, "second start", GUEST_TIMEOUT, |t| {
        starts(t) == 2 && has_run_of_ticks(t, 3)
    });
    remote_ok(&chv, &sock, &["shutdown"]);
    expect_stalled(&chv, &serial, STALL, "after chv-remote shutdown");
    chv.check(info(&chv) == "Created", "info after shutdown");
    remote_ok(&chv, &sock, &["delete"]);
    remote_err(&chv, &sock, &["info"], "404");
    remote_ok(&chv, &sock, &["ping"]);

    chv.check(
        remote_ok(&chv, &sock, &["shutdown-vmm"]).is_empty(),
        "shutdown-vmm prints nothing",
    );
    expect_clean_exit(chv);
    let (code, _, err) = remote(&sock, &["ping"]);
    assert!(
        code == 1 && err.contains("cannot connect"),
        "ping after exit: {code} {err:?}"
    );
}

/// Every command chv-remote shares with Cloud Hypervisor's ch-remote, in
/// ch-remote's syntax, against a real chv running the test guest: cold
/// adds (a tap fd passed as `fd=[N]` travels as SCM_RIGHTS), the refusals
/// naming their field, resize flags with sizes, boot, snapshot, restore
/// with `memory_restore_mode`, and a migration between two chv processes
/// with `destination_url=…,downtime_ms=…` / `receiver_url=…`.
#[test]
fn ch_remote_syntax_with_chv_remote() {
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("chsyntax");
    let serial = dir.join("serial.log");
    let config_file = dir.join("vm.json");
    let config = ticker_config(&serial).replace(r#""max_vcpus":1"#, r#""max_vcpus":2"#);
    std::fs::write(&config_file, &config).expect("write config");
    let config_arg = config_file.display().to_string();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let (chv, sock) = start_vmm(&dir);
    let file = |name: &str| dir.join(name).display().to_string();

    // A created VM takes cold adds; what chv cannot honour is refused by name.
    remote_ok(&chv, &sock, &["create", &config_arg]);
    let tap = chv_tests::open_tap(&format!("chvr{}", std::process::id() % 100_000));
    remote_ok(
        &chv,
        &sock,
        &[
            "add-net",
            &format!("fd=[{}],mac=12:34:56:78:9a:bc", tap.as_raw_fd()),
        ],
    );
    let info = remote_ok(&chv, &sock, &["info"]);
    chv.check(
        info.contains("12:34:56:78:9a:bc"),
        &format!("the cold-added NIC is not in vm.info: {info}"),
    );
    remote_ok(&chv, &sock, &["delete"]);
    drop(tap);

    remote_ok(&chv, &sock, &["create", &config_arg]);
    remote_ok(
        &chv,
        &sock,
        &["add-disk", &format!("path={}", disk.display())],
    );
    remote_ok(
        &chv,
        &sock,
        &["add-vsock", &format!("cid=3,socket={}", file("vsock.sock"))],
    );
    for (args, field) in [
        (
            vec![
                "add-fs".to_string(),
                format!("tag=myfs,socket={}", file("fs.sock")),
            ],
            "fs",
        ),
        (
            vec![
                "add-pmem".into(),
                format!("file={},size=1M", disk.display()),
            ],
            "pmem",
        ),
        (
            vec![
                "add-device".into(),
                "path=/sys/bus/pci/devices/0000:01:00.0".into(),
            ],
            "devices",
        ),
        (
            vec![
                "add-user-device".into(),
                format!("socket={}", file("u.sock")),
            ],
            "user_devices",
        ),
        (
            vec![
                "add-vdpa".into(),
                "path=/dev/vhost-vdpa-0,num_queues=1".into(),
            ],
            "vdpa",
        ),
        (
            vec!["resize".into(), "--balloon".into(), "16M".into()],
            "desired_balloon",
        ),
        (
            vec![
                "resize-zone".into(),
                "--id".into(),
                "mem0".into(),
                "--size".into(),
                "1G".into(),
            ],
            "mem0",
        ),
        (
            vec![
                "resize-disk".into(),
                "--disk".into(),
                "_disk0".into(),
                "--size".into(),
                "2G".into(),
            ],
            "desired_size",
        ),
        (
            vec!["coredump".into(), format!("file://{}", file("core"))],
            "destination_url",
        ),
        (vec!["nmi".into()], "501"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        remote_err(&chv, &sock, &args, field);
    }
    remote_ok(
        &chv,
        &sock,
        &["resize", "--cpus", "2", "--memory", "64M", "--balloon", "0"],
    );
    let info = remote_ok(&chv, &sock, &["info"]);
    chv.check(
        info.contains(r#""boot_vcpus":2"#),
        &format!("resize --cpus 2 did not reach vm.info: {info}"),
    );
    remote_ok(&chv, &sock, &["resize", "--cpus", "1"]);
    remote_ok(&chv, &sock, &["remove-device", "_disk0"]);
    remote_err(&chv, &sock, &["remove-device", "_disk7"], "_disk7");

    remote_ok(&chv, &sock, &["boot"]);
    wait_file(&chv, &serial, "ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 3)
    });
    remote_ok(&chv, &sock, &["power-button"]);
    remote_ok(&chv, &sock, &["counters"]);
    remote_ok(&chv, &sock, &["pause"]);
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).expect("snap dir");
    let snap_url = format!("file://{}", snap.display());
    remote_ok(&chv, &sock, &["snapshot", &snap_url]);
    remote_ok(&chv, &sock, &["delete"]);
    remote_err(
        &chv,
        &sock,
        &[
            "restore",
            &format!("source_url={snap_url},memory_restore_mode=Sometimes"),
        ],
        "Sometimes",
    );
    remote_ok(
        &chv,
        &sock,
        &[
            "restore",
            &format!("source_url={snap_url},memory_restore_mode=ondemand"),
        ],
    );
    remote_ok(&chv, &sock, &["resume"]);
    expect_growing(&chv, &serial, 20, "ticks after restore");

    // Migration in ch-remote's key=value syntax.
    let dir2 = Scratch::new("chsyntax-recv");
    let (chv2, sock2) = start_vmm(&dir2);
    let mig = dir.join("mig.sock");
    let receiver = {
        let (sock2, url) = (
            sock2.clone(),
            format!("receiver_url=unix:{}", mig.display()),
        );
        thread::spawn(move || remote(&sock2, &["receive-migration", &url]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mig.exists() {
        if Instant::now() > deadline {
            chv2.fail("the receiver never listened");
        }
        thread::sleep(Duration::from_millis(20));
    }
    remote_err(
        &chv,
        &sock,
        &[
            "send-migration",
            &format!("destination_url=unix:{},connections=2", mig.display()),
        ],
        "connections",
    );
    remote_ok(
        &chv,
        &sock,
        &[
            "send-migration",
            &format!(
                "destination_url=unix:{},downtime_ms=200,timeout_s=60,timeout_strategy=Cancel",
                mig.display()
            ),
        ],
    );
    let (code, out, err) = receiver.join().expect("receiver");
    chv2.check(
        code == 0,
        &format!("receive-migration: {code} {out:?} {err:?}"),
    );
    let info = remote_ok(&chv2, &sock2, &["info"]);
    chv2.check(
        info.contains(r#""state":"Running""#),
        &format!("receiver: {info}"),
    );
    remote_ok(&chv2, &sock2, &["shutdown"]);
    remote_ok(&chv2, &sock2, &["shutdown-vmm"]);
    expect_clean_exit(chv2);
    let mut chv = chv;
    let st = chv.expect_exit(Duration::from_secs(20));
    chv.assert_no_panic();
    chv.check(st.code() == Some(0), &format!("sender exit {st}"));
}

/// ch-remote's `restore source_url=…,net_fds=[id@[fd,…]]` through
/// chv-remote: a ticker VM with a NIC on a tap is snapshotted, deleted and
/// restored onto a new tap whose fd the test opens and chv-remote inherits
/// and passes as SCM_RIGHTS (the body carries `{id, num_fds}` only); bad
/// `net_fds` syntax and an fd that is not open are refused naming
/// `net_fds`, before anything reaches chv.
#[test]
fn restore_with_net_fds_through_chv_remote() {
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("remote-netfds");
    let serial = dir.join("serial.log");
    let config_file = dir.join("vm.json");
    std::fs::write(&config_file, ticker_config(&serial)).expect("write config");
    let (chv, sock) = start_vmm(&dir);
    let tap_name = |n: u32| format!("chvn{}{n}", std::process::id() % 10_000);

    remote_ok(&chv, &sock, &["create", &config_file.display().to_string()]);
    let tap = chv_tests::open_tap(&tap_name(1));
    remote_ok(
        &chv,
        &sock,
        &[
            "add-net",
            &format!("fd=[{}],id=net0,mac=12:34:56:78:9a:bd", tap.as_raw_fd()),
        ],
    );
    remote_ok(&chv, &sock, &["boot"]);
    wait_file(&chv, &serial, "ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 3)
    });
    remote_ok(&chv, &sock, &["pause"]);
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).expect("snap dir");
    let snap_url = format!("file://{}", snap.display());
    remote_ok(&chv, &sock, &["snapshot", &snap_url]);
    remote_ok(&chv, &sock, &["delete"]);
    drop(tap);

    // Refused by chv-remote itself, naming net_fds.
    let not_open = 1000;
    for bad in [
        "net_fds=[net0@[x]]".to_string(),
        "net_fds=[@[3]]".to_string(),
        "net_fds=net0".to_string(),
        "net_fds=[net0@[3]".to_string(),
        format!("net_fds=[net0@[{not_open}]]"),
    ] {
        remote_err(
            &chv,
            &sock,
            &["restore", &format!("source_url={snap_url},{bad}")],
            "net_fds",
        );
    }
    remote_err(&chv, &sock, &["info"], "404");

    let tap = chv_tests::open_tap(&tap_name(2));
    let out = remote_ok(
        &chv,
        &sock,
        &[
            "restore",
            &format!(
                "source_url={snap_url},resume=false,net_fds=[net0@[{}]]",
                tap.as_raw_fd()
            ),
        ],
    );
    chv.check(out.is_empty(), &format!("restore printed {out:?}"));
    let info = remote_ok(&chv, &sock, &["info"]);
    chv.check(
        info.contains(r#""state":"Paused""#)
            && info.contains(r#""id":"net0""#)
            && info.contains("12:34:56:78:9a:bd"),
        &format!("vm.info after the restore with net_fds: {info}"),
    );
    chv.check(
        !info.contains(&tap_name(1)),
        &format!("vm.info still names the old tap: {info}"),
    );
    remote_ok(&chv, &sock, &["resume"]);
    expect_growing(&chv, &serial, 20, "ticks after the restore with net_fds");
    remote_ok(&chv, &sock, &["shutdown-vmm"]);
    drop(tap);
    expect_clean_exit(chv);
}
