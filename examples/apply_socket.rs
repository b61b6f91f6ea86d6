//! Apply a patch received over TCP, with no temporary file: the patch is read once, front to
//! back, from the socket ([`bundelta::Patcher::open_reader`]), and OUT appears only once every
//! file, the bundle digest and the patch's checksum were verified.
//!
//! ```text
//! cargo run --release --example apply_socket -- OLD HOST:PORT OUT
//! ```
//!
//! The server sends the patch bytes and closes the connection (capi/test.sh serves corpus
//! patches this way to this example and to the C example).

use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old, addr, out] = &args[..] else {
        eprintln!("usage: apply_socket OLD HOST:PORT OUT");
        return ExitCode::from(2);
    };
    let run = || -> Result<bundelta::ApplyReport, Box<dyn std::error::Error>> {
        let sock = TcpStream::connect(addr)?;
        let patcher = bundelta::Patcher::new();
        let patch = patcher.open_reader(sock, addr)?;
        Ok(patcher.apply_patch(Path::new(old), patch, Path::new(out))?)
    };
    match run() {
        Ok(r) => {
            println!(
                "{out}: {} files, {} bytes, blake3 {}",
                r.files,
                r.bytes,
                bundelta::hex(&r.digest)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("apply_socket: {e}");
            ExitCode::FAILURE
        }
    }
}
