//! include/prip.h is what cbindgen makes of src/lib.rs. Regenerate after changing the
//! ABI with `PRIP_BLESS=1 cargo test -p prip-abi --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads src/lib.rs")
        .write(&mut generated);
    let path = dir.join("include/prip.h");
    if std::env::var_os("PRIP_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "plugin-abi/include/prip.h is out of date: run PRIP_BLESS=1 cargo test -p prip-abi --test header"
    );
}
