//! Small command-line front end to `sfc-crypto`, used by the Python interop tests.
//!
//! ```text
//! crypto_tool wrap    <spki.der> <aes key hex>          -> prints the wrapped key (hex)
//! crypto_tool unwrap  <priv.key> <wrapped hex>          -> prints the AES key (hex)
//! crypto_tool encrypt <aes key hex> <in> <out> [chunk]  -> AES-256-CBC, zero IV, PKCS#7
//! crypto_tool decrypt <aes key hex> <in> <out> [chunk]
//! crypto_tool cksum   <file>                            -> prints "<cksum> <length>"
//! crypto_tool pubder  <priv.key> <out.der>              -> writes the SPKI DER
//! ```

use std::error::Error;
use std::fs;
use std::io::{Read, Write};

use sfc_crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum, PublicKey, RsaKeyPair};

type Res<T> = Result<T, Box<dyn Error>>;

fn from_hex(s: &str) -> Res<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2).ok_or("bad hex")?;
            Ok(u8::from_str_radix(pair, 16)?)
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn arg(args: &[String], i: usize) -> Res<&str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {i}; see the source for usage").into())
}

/// Streams `input` through `step` in chunks of `chunk` bytes, writing to `output`.
fn stream(
    input: &str,
    output: &str,
    chunk: usize,
    mut step: impl FnMut(&[u8], &mut Vec<u8>) -> Res<()>,
) -> Res<()> {
    let mut reader = fs::File::open(input)?;
    let mut writer = std::io::BufWriter::new(fs::File::create(output)?);
    let mut buf = vec![0u8; chunk.max(1)];
    let mut out = Vec::with_capacity(buf.len() + 16);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.clear();
        step(buf.get(..n).ok_or("read overflow")?, &mut out)?;
        writer.write_all(&out)?;
    }
    out.clear();
    step(&[], &mut out)?;
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match arg(&args, 1)? {
        "wrap" => {
            let public = PublicKey::from_spki_der(&fs::read(arg(&args, 2)?)?)?;
            let key = AesKey::from_bytes(&from_hex(arg(&args, 3)?)?)?;
            println!("{}", to_hex(&public.wrap_aes_key(&key)?));
        }
        "unwrap" => {
            let pair = RsaKeyPair::from_file_bytes(&fs::read(arg(&args, 2)?)?)?;
            let key = pair.unwrap_aes_key(&from_hex(arg(&args, 3)?)?)?;
            println!("{}", to_hex(key.as_bytes()));
        }
        "pubder" => {
            let pair = RsaKeyPair::from_file_bytes(&fs::read(arg(&args, 2)?)?)?;
            fs::write(arg(&args, 3)?, pair.public_key_der())?;
        }
        mode @ ("encrypt" | "decrypt") => {
            let key = AesKey::from_bytes(&from_hex(arg(&args, 2)?)?)?;
            let chunk: usize = match args.get(5) {
                Some(c) => c.parse()?,
                None => 64 * 1024,
            };
            if mode == "encrypt" {
                let mut enc = Some(CbcEncryptor::new(&key)?);
                stream(arg(&args, 3)?, arg(&args, 4)?, chunk, |data, out| {
                    if data.is_empty() {
                        enc.take().ok_or("finished twice")?.finish(out)?;
                    } else {
                        enc.as_mut().ok_or("finished")?.update(data, out)?;
                    }
                    Ok(())
                })?;
            } else {
                let mut dec = Some(CbcDecryptor::new(&key)?);
                stream(arg(&args, 3)?, arg(&args, 4)?, chunk, |data, out| {
                    if data.is_empty() {
                        dec.take().ok_or("finished twice")?.finish(out)?;
                    } else {
                        dec.as_mut().ok_or("finished")?.update(data, out)?;
                    }
                    Ok(())
                })?;
            }
        }
        "cksum" => {
            let file = fs::File::open(arg(&args, 2)?)?;
            let mut c = Cksum::new();
            std::io::copy(
                &mut std::io::BufReader::with_capacity(256 * 1024, file),
                &mut c,
            )?;
            println!("{} {}", c.finish(), c.len());
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
