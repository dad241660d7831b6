//! Generates an RSA-1024 (e = 17) key pair with `sfc-crypto` and writes
//! `<dir>/ours_pub.der` (SPKI DER, 160 bytes) and `<dir>/ours_priv.b64` (one line of base64
//! of the PKCS#8 DER, as the client's `priv.key`).
//!
//! Usage: `cargo run -p sfc-crypto --example gen_keypair -- <dir>`

use std::error::Error;
use std::path::PathBuf;

use sfc_crypto::RsaKeyPair;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .ok_or("usage: gen_keypair <output dir>")?,
    );
    let pair = RsaKeyPair::generate()?;
    let public = pair.public_key_der();
    std::fs::write(dir.join("ours_pub.der"), &public)?;
    std::fs::write(dir.join("ours_priv.b64"), pair.to_base64()?.as_bytes())?;
    println!(
        "wrote {} ({} bytes) and {}",
        dir.join("ours_pub.der").display(),
        public.len(),
        dir.join("ours_priv.b64").display()
    );
    Ok(())
}
