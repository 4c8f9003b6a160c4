//! Prints `radon cc -j`-shaped JSON for the Python files named on the command line, without
//! a node: `cargo run --release -p pyagent-agents --example cc_json -- FILE...` (handy for
//! comparing with `radon cc -j` file by file).

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut out = serde_json::Map::new();
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path)?;
        let analysed = pyagent_agents::python::decode_source(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|text| pyagent_agents::complexity::analyze(&text).map_err(|e| e.to_string()));
        let value = match analysed {
            Ok(blocks) => serde_json::Value::Array(pyagent_agents::complexity::blocks_json(&blocks)),
            Err(err) => serde_json::json!({ "error": err.to_string() }),
        };
        out.insert(path, value);
    }
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    writeln!(stdout)
}
