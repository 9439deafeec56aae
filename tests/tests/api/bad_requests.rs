//! Bad requests and hostile clients: chv answers 4xx and keeps serving.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use crate::harness::*;
use crate::http::*;

#[test]
fn bad_requests_keep_the_vmm_serving() {
    let dir = Scratch::new("bad");
    let (chv, sock) = start_vmm(&dir);
    let ping_ok = |what: &str| {
        expect_status(
            &chv,
            &format!("ping after {what}"),
            &get(&sock, "vmm.ping"),
            200,
        )
    };
    let serial = dir.join("serial.log");
    let good = ticker_config(&serial);

    // Bodies the VMM must refuse.
    let bodies = [
        ("malformed JSON", "{\"payload\": {\"kernel\": "),
        ("not JSON", "kernel=/x"),
        ("empty body", ""),
        ("JSON array", "[1,2,3]"),
        (
            "memory size as string",
            r#"{"payload":{"kernel":"/k"},"memory":{"size":"64M"}}"#,
        ),
        (
            "negative vcpus",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":-1,"max_vcpus":1}}"#,
        ),
        (
            "vcpus overflow",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":300,"max_vcpus":300}}"#,
        ),
        (
            "zero vcpus",
            r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0,"max_vcpus":1}}"#,
        ),
        (
            "bad serial mode",
            r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Loud"}}"#,
        ),
        ("payload missing", r#"{"memory":{"size":67108864}}"#),
        ("trailing NUL", "{\"payload\":{\"kernel\":\"/k\"}}\u{0}"),
    ];
    for (what, body) in bodies {
        let r = put(&sock, "vm.create", Some(body));
        expect_status(&chv, &format!("vm.create with {what}"), &r, 400);
        chv.check(
            !r.body.is_empty(),
            &format!("{what}: 400 without a message"),
        );
    }
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nConnection: close\r\nContent-Length: 6\r\n\r\n{\xff\xfe}\x00\x01",
    );
    expect_status(&chv, "vm.create with binary body", &r, 400);
    expect_status(
        &chv,
        "vm.info after refused creates",
        &get(&sock, "vm.info"),
        404,
    );
    ping_ok("bad bodies");

    // Keys outside the schema are ignored, as Cloud Hypervisor ignores them.
    let mut unknown: serde_json::Value = serde_json::from_str(&good).expect("good config");
    unknown["frobnicate"] = 1.into();
    unknown["payload"]["bogus"] = true.into();
    expect_status(
        &chv,
        "vm.create with unknown keys",
        &put(&sock, "vm.create", Some(&unknown.to_string())),
        204,
    );
    let info = get(&sock, "vm.info");
    chv.check(
        info.status == 200 && !info.body.contains("frobnicate") && !info.body.contains("bogus"),
        &format!("vm.info after unknown keys: {} {}", info.status, info.body),
    );
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);

    // Actions in the wrong order.
    expect_status(
        &chv,
        "vm.boot before create",
        &put(&sock, "vm.boot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.pause before create",
        &put(&sock, "vm.pause", None),
        404,
    );
    expect_status(
        &chv,
        "vm.resume before create",
        &put(&sock, "vm.resume", None),
        404,
    );
    expect_status(
        &chv,
        "vm.shutdown before create",
        &put(&sock, "vm.shutdown", None),
        404,
    );
    expect_status(
        &chv,
        "vm.reboot before create",
        &put(&sock, "vm.reboot", None),
        404,
    );
    expect_status(
        &chv,
        "vm.counters before create",
        &get(&sock, "vm.counters"),
        404,
    );
    expect_status(
        &chv,
        "vm.delete without a VM",
        &put(&sock, "vm.delete", None),
        204,
    );
    expect_status(
        &chv,
        "vm.create",
        &put(&sock, "vm.create", Some(&good)),
        204,
    );
    expect_status(
        &chv,
        "vm.create twice",
        &put(&sock, "vm.create", Some(&good)),
        409,
    );
    let r = put(&sock, "vm.pause", None);
    chv.check(
        matches!(r.status, 404 | 405),
        &format!(
            "vm.pause of a created, not booted VM: {} {:?}",
            r.status, r.body
        ),
    );
    expect_status(
        &chv,
        "vm.resume when not booted",
        &put(&sock, "vm.resume", None),
        r.status,
    );
    chv.check(
        vm_state(&chv, &sock) == "Created",
        "state after refused actions",
    );
    expect_status(&chv, "vm.delete", &put(&sock, "vm.delete", None), 204);
    chv.check(!serial.exists(), "no guest may have run");

    // Routing and methods.
    for path in [
        "/api/v1/vm.bogus",
        "/api/v1/",
        "/",
        "/api/v2/vmm.ping",
        "/api/v1/vmm.ping/x",
    ] {
        let r = raw_one(
            &sock,
            format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        expect_status(&chv, &format!("GET {path}"), &r, 404);
    }
    for (method, endpoint, allow) in [
        ("GET", "vm.create", "PUT"),
        ("POST", "vm.boot", "PUT"),
        ("PUT", "vmm.ping", "GET"),
        ("DELETE", "vm.info", "GET"),
        ("BREW", "vm.info", "GET"),
    ] {
        let r = request(&sock, method, endpoint, None);
        expect_status(&chv, &format!("{method} {endpoint}"), &r, 405);
        chv.check(
            r.header("allow") == Some(allow),
            &format!("{method} {endpoint}: Allow {:?}", r.header("allow")),
        );
    }
    expect_status(&chv, "vm.nmi", &put(&sock, "vm.nmi", Some("{}")), 501);
    // Served endpoints whose body misses a required field: 400 naming it.
    for (endpoint, field) in [("vm.coredump", "destination_url"), ("vm.add-vdpa", "path")] {
        let r = put(&sock, endpoint, Some("{}"));
        expect_status(&chv, endpoint, &r, 400);
        chv.check(
            r.body.contains(field),
            &format!("{endpoint}: {} does not name {field}", r.body),
        );
    }
    ping_ok("routing errors");

    // Framing errors.
    let mut big = b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    big.extend((0..1usize << 20).map(|i| (i * 7919 % 251) as u8));
    expect_status(&chv, "1 MiB body", &raw_one(&sock, &big), 413);
    let garbage: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 256) as u8).collect();
    let r = raw_one(&sock, &garbage);
    chv.check(
        matches!(r.status, 400 | 431),
        &format!("1 MiB of garbage: {}", r.status),
    );
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    expect_status(&chv, "chunked body", &r, 411);
    let r = raw_one(
        &sock,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    );
    expect_status(&chv, "negative Content-Length", &r, 400);
    let mut long = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100_000));
    long.extend_from_slice(b"\r\n\r\n");
    expect_status(&chv, "100 kB header", &raw_one(&sock, &long), 431);
    ping_ok("framing errors");

    // Keep-alive: pipelined requests are answered in order on one connection.
    let rs = exchange(
        &sock,
        b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\nGET /api/v1/vm.info HTTP/1.1\r\n\r\nGET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    chv.check(
        statuses == [200, 404, 200],
        &format!("pipelined statuses {statuses:?}"),
    );

    // A client stalled mid-request does not block the others.
    let mut stalled = UnixStream::connect(&sock).expect("connect");
    stalled
        .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    ping_ok("a stalled client");
    stalled
        .write_all(b"Connection: close\r\n\r\n")
        .expect("write");
    let rs = read_all(&mut stalled);
    chv.check(
        rs.starts_with(b"HTTP/1.1 200 "),
        "the stalled client got its answer",
    );

    // Clients that disconnect mid-request or without reading the answer.
    for raw in [
        &b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"payload\""[..],
        b"PUT /api/v1/vm.cre",
        b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n",
        b"PUT /api/v1/vm.boot HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(raw).expect("write");
        if raw.ends_with(b"\r\n\r\n") {
            let _ = s.shutdown(Shutdown::Write);
        }
        drop(s);
    }
    ping_ok("clients vanishing mid-request");

    // 200 clients connecting at once, some sending part of a request, all
    // dropped together; then 50 concurrent pings.
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        if i % 3 == 0 {
            let _ = s.write_all(b"GET /api/v1/vmm.pi");
        } else if i % 3 == 1 {
            let _ = s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
        }
        conns.push(s);
    }
    drop(conns);
    let pingers: Vec<_> = (0..50)
        .map(|_| {
            let sock = sock.clone();
            thread::spawn(move || get(&sock, "vmm.ping").status)
        })
        .collect();
    let statuses: Vec<u16> = pingers
        .into_iter()
        .map(|h| h.join().expect("pinger"))
        .collect();
    chv.check(
        statuses.iter().all(|s| *s == 200),
        &format!("concurrent pings: {statuses:?}"),
    );
    ping_ok("200 dropped clients");

    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}

/// Many clients sending large (valid-size) bodies at once, then closing:
/// the api thread's allocator returns the freed memory to the system, which
/// must not trip its seccomp filter (glibc's heap trimming reads
/// /proc/sys/vm/overcommit_memory the first time it shrinks a heap).
#[test]
fn many_large_bodies_then_disconnect() {
    let dir = Scratch::new("bodies");
    let (chv, sock) = start_vmm(&dir);
    for round in 0..3 {
        let mut conns = Vec::new();
        for i in 0..30 {
            let n = 2000 * (i + 1);
            let mut s = UnixStream::connect(&sock).expect("connect");
            let mut req = format!("PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: {n}\r\n\r\n")
                .into_bytes();
            req.extend(std::iter::repeat_n(b'x', n));
            s.write_all(&req).expect("write");
            conns.push(s);
        }
        thread::sleep(Duration::from_millis(100));
        let r = get(&sock, "vmm.ping");
        expect_status(
            &chv,
            &format!("ping with 30 big requests (round {round})"),
            &r,
            200,
        );
        drop(conns);
        thread::sleep(Duration::from_millis(100));
        if UnixStream::connect(&sock).is_err() {
            chv.fail(&format!(
                "chv died after 30 clients with big bodies closed (round {round})"
            ));
        }
        let r = get(&sock, "vmm.ping");
        expect_status(
            &chv,
            &format!("ping after the clients left (round {round})"),
            &r,
            200,
        );
    }
    expect_status(&chv, "vmm.shutdown", &put(&sock, "vmm.shutdown", None), 204);
    expect_clean_exit(chv);
}
