//! The identity files as an interrupted save leaves them, read by the real client binary
//! against our real server (in-process).
#![cfg(test)]

mod common;

use common::{
    make_file, read_me_info, run_client, start_server_with, tempdir, write_transfer_info,
};

/// A save of a new identity cut after me.info (killed, power cut) leaves the old
/// identity's priv.key beside it, and the temporary files of the writes it was doing. The
/// next run reconnects with me.info's key (the one the server has for that ID), warns that
/// priv.key differs, and removes the temporaries, which may hold a key.
#[test]
fn a_save_cut_after_me_info_still_reconnects_and_its_temporaries_go() {
    let data = tempdir();
    let server = start_server_with(data.path(), |_| {});
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "ivan", "x.bin");
    make_file(&dir.path().join("x.bin"), 100, 1);
    run_client(dir.path(), &[]).assert_code(0);
    let (_, id) = read_me_info(dir.path());
    let me_before = std::fs::read(dir.path().join("me.info")).unwrap();

    let stale_key = sfc_crypto::RsaKeyPair::generate()
        .unwrap()
        .to_base64()
        .unwrap()
        .to_string();
    std::fs::write(dir.path().join("priv.key"), &stale_key).unwrap();
    let temporaries =
        [".priv.key.a1B2c3.tmp", ".me.info.Zz9y8X.tmp"].map(|name| dir.path().join(name));
    for path in &temporaries {
        std::fs::write(path, &stale_key).unwrap();
    }

    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    assert!(run.stdout.contains(&id), "{}", run.stdout);
    assert!(
        run.stderr.contains("differ; using the key in me.info"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("-> 825"), "{}", run.stderr);
    for path in &temporaries {
        assert!(!path.exists(), "{} is left", path.display());
    }
    assert_eq!(
        std::fs::read(dir.path().join("me.info")).unwrap(),
        me_before
    );
    server.stop();
}
