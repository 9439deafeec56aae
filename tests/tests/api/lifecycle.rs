//! The VM lifecycle over the API: the tiny test guest and one Linux boot.

use std::time::Duration;

use chv_tests::{count_occurrences, require_guest_kit};

use crate::harness::*;
use crate::http::*;

#[test]
fn lifecycle_with_test_guest() {
    let dir = Scratch::new("life");
    let serial = dir.join("serial.log");
    let (chv, sock) = start_vmm(&dir);

    let r = get(&sock, "vmm.ping");
    expect_status(&chv, "vmm.ping", &r, 200);
    chv.check(
        r.header("content-type") == Some("application/json"),
        &format!("vmm.ping content type {:?}", r.header("content-type")),
    );
    let ping = r.json();
    chv.check(
        matches!(ping.get("version"), Some(Json::Str(v)) if !v.is_empty()),
        &format!("vmm.ping has no version: {}", r.body),
    );
    chv.check(
        ping.get("pid") == Some(&Json::Num(f64::from(chv.pid()))),
        &format!("vmm.ping pid is not {}: {}", chv.pid(), r.body),
    );
    expect_status(&chv, "vm.info before create", &get(&sock, "vm.info"), 404);

    let config = ticker_config(&serial);
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&config)),
        204,
    );
    chv.check(vm_state(&chv, &sock) == "Created", "state after create");
    chv.check(!serial.exists(), "the guest must not run before vm.boot");
    expect_status(&chv, "vm.boot", &put(&sock, "vm.boot", None), 204);
    wait_file(&chv, &serial, "5 ticks", GUEST_TIMEOUT, |t| {
        has_run_of_ticks(t, 5)
    });
    chv.check(vm_state(&chv, &sock) == "Running", "state after boot");
    expect_status(
        &chv,
        "vm.boot while running",
        &put(&sock, "vm.boot", None),
        409,
    );
    expect_status(
        &chv,
        "vm.resume while running",
        &put(&sock, "vm.resume", None),
        405,
    );

    // Pause: nothing more reaches the console; resume continues the count.
    expect_status(&chv, "vm.pause", &put(&sock, "vm.pause", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.pause");
    chv.check(vm_state(&chv, &sock) == "Paused", "state after pause");
    expect_status(&chv, "vm.pause twice", &put(&sock, "vm.pause", None), 405);
    expect_stalled(&chv, &serial, Duration::from_millis(100), "still paused");
    let last = ticks(&read_text(&serial)).last().copied().unwrap_or(0);
    expect_status(&chv, "vm.resume", &put(&sock, "vm.resume", None), 204);
    chv.check(vm_state(&chv, &sock) == "Running", "state after resume");
    wait_file(&chv, &serial, "ticks after resume", GUEST_TIMEOUT, |t| {
        ticks(t).last().is_some_and(|n| *n >= last + 3)
    });
    let text = read_text(&serial);
    chv.check(
        starts(&text) == 1,
        "the guest restarted across pause/resume",
    );
    chv.check(
        ticks(&text).windows(2).all(|w| w[1] == w[0] + 1),
        "ticks are not consecutive across pause/resume",
    );

    let r = get(&sock, "vm.counters");
    expect_status(&chv, "vm.counters", &r, 200);
    chv.check(
        matches!(r.json(), Json::Obj(_)),
        &format!("vm.counters: {}", r.body),
    );

    // Reboot: the guest starts over.
    expect_status(&chv, "vm.reboot", &put(&sock, "vm.reboot", None), 204);
    wait_file(&chv, &serial, "second start", GUEST_TIMEOUT, |t| {
        starts(t) == 2 && has_run_of_ticks(t, 3)
    });
    chv.check(vm_state(&chv, &sock) == "Running", "state after reboot");

    // Shutdown: the VM stops, the VMM stays; it can boot again.
    expect_status(&chv, "vm.shutdown", &put(&sock, "vm.shutdown", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.shutdown");
    chv.check(vm_state(&chv, &sock) == "Created", "state after shutdown");
    expect_status(
        &chv,
        "vm.pause when shut down",
        &put(&sock, "vm.pause", None),
        405,
    );
    expect_status(&chv, "vm.boot again", &put(&sock, "vm.boot", None), 204);
    wait_file(&chv, &serial, "third start", GUEST_TIMEOUT, |t| {
        starts(t) == 3 && has_run_of_ticks(t, 3)
    });
    chv.check(
        vm_state(&chv, &sock) == "Running",
        "state after second boot",
    );

    // Delete (while running) stops the guest and forgets the config.
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);
    expect_stalled(&chv, &serial, STALL, "after vm.delete");
    expect_status(&chv, "vm.info after delete", &get(&sock, "vm.info"), 404);
    expect_status(
        &chv,
        "vm.boot after delete",
        &put(&sock, "vm.boot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.counters after delete",
        &get(&sock, "vm.counters"),
        404,
    );
    expect_status(&chv, "ping after delete", &get(&sock, "vmm.ping"), 200);

    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}

#[test]
fn linux_lifecycle() {
    let Some(kit) = require_guest_kit() else {
        return;
    };
    let dir = Scratch::new("linux");
    let serial = dir.join("serial.log");
    let (chv, sock) = start_vmm(&dir);
    let guest_cmd = "i=0; while [ $i -lt 3000 ]; do echo LOOP $i; i=$((i+1)); sleep 0.2; done";
    let cmdline = format!("console=ttyS0 quiet panic=-1 guest_cmd=\"{guest_cmd}\"");
    let config = format!(
        r#"{{"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":134217728}},"payload":{{"kernel":{},"initramfs":{},"cmdline":{}}},"serial":{{"mode":"File","file":{}}},"console":{{"mode":"Off"}}}}"#,
        json_str(&kit.kernel.display().to_string()),
        json_str(&kit.initramfs.display().to_string()),
        json_str(&cmdline),
        json_str(&serial.display().to_string())
    );
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&config)),
        204,
    );
    expect_status(&chv, "vm.boot", &put(&sock, "vm.boot", None), 204);
    let loop_lines = |t: &str| t.lines().filter(|l| l.starts_with("LOOP ")).count();
    wait_file(&chv, &serial, "LOOP 2", Duration::from_secs(240), |t| {
        assert!(!t.contains("Kernel panic"), "guest panicked:\n{t}");
        loop_lines(t) >= 3
    });
    eprintln!("linux: loop running after {:.1?}", chv.elapsed());
    expect_status(&chv, "ping while Linux runs", &get(&sock, "vmm.ping"), 200);

    expect_status(&chv, "vm.pause", &put(&sock, "vm.pause", None), 204);
    chv.check(vm_state(&chv, &sock) == "Paused", "state after pause");
    expect_stalled(&chv, &serial, Duration::from_secs(2), "paused Linux");
    let before = loop_lines(&read_text(&serial));
    expect_status(&chv, "vm.resume", &put(&sock, "vm.resume", None), 204);
    wait_file(
        &chv,
        &serial,
        "LOOP lines after resume",
        Duration::from_secs(60),
        |t| loop_lines(t) >= before + 3,
    );
    chv.check(vm_state(&chv, &sock) == "Running", "state after resume");
    let r = get(&sock, "vm.counters");
    expect_status(&chv, "vm.counters", &r, 200);

    expect_status(&chv, "vm.shutdown", &put(&sock, "vm.shutdown", None), 204);
    chv.check(vm_state(&chv, &sock) == "Created", "state after shutdown");
    expect_stalled(&chv, &serial, Duration::from_secs(1), "shut-down Linux");
    let text = read_text(&serial);
    chv.check(
        count_occurrences(text.as_bytes(), b"GUEST-READY") == 1,
        "Linux booted more than once",
    );
    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    eprintln!("linux: chv stopped after {:.1?}", chv.elapsed());
    expect_clean_exit(chv);
}
