//! Live migration between two chv processes over a Unix socket, as the
//! tests drive it: `vm.receive-migration` on the receiver, then
//! `vm.send-migration` on the source.

use std::path::Path;
use std::time::Duration;

use crate::api_client::http;
use crate::Chv;

/// Migrates the VM `src` serves on `src_api` to the empty chv `dst`
/// serving `dst_api`, through a socket the receiver listens on at `mig`.
/// Checks that both requests answer 204 and that the source then exits 0.
pub fn migrate_over_unix(src: &mut Chv, src_api: &Path, dst: &Chv, dst_api: &Path, mig: &Path) {
    let (status, _) = http(dst_api, "GET", "vmm.ping", None);
    dst.check(status == 200, "receiver vmm.ping");
    let receiver = {
        let (sock, url) = (
            dst_api.to_path_buf(),
            format!(r#"{{"receiver_url":"unix:{}"}}"#, mig.display()),
        );
        std::thread::spawn(move || http(&sock, "PUT", "vm.receive-migration", Some(&url)))
    };
    for _ in 0..250 {
        if mig.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let send = format!(r#"{{"destination_url":"unix:{}"}}"#, mig.display());
    let (status, body) = http(src_api, "PUT", "vm.send-migration", Some(&send));
    src.check(
        status == 204,
        &format!("vm.send-migration: {status} {body}"),
    );
    let (status, body) = receiver
        .join()
        .unwrap_or_else(|_| dst.fail("the receiving thread panicked"));
    dst.check(
        status == 204,
        &format!("vm.receive-migration: {status} {body}"),
    );
    let exit = src.expect_exit(Duration::from_secs(30));
    src.check(exit.success(), &format!("the source exited with {exit}"));
}
