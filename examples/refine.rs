//! Refine prompts from Rust: `cargo run --example refine -- "a little cat"`.
//!
//! Opens the packaged default model (fetching its base models through the model store
//! on first use) and refines the prompts given on the command line as one batch.

use prip_core::{RefineRequest, Refiner, RefinerOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompts: Vec<String> = std::env::args().skip(1).collect();
    let prompts = if prompts.is_empty() {
        vec!["a little cat running in the woods".to_string()]
    } else {
        prompts
    };
    let mut refiner = Refiner::open(&RefinerOptions::default())?;
    let requests: Vec<RefineRequest> = prompts
        .into_iter()
        .map(|p| RefineRequest {
            seed: Some(7),
            ..RefineRequest::new(p)
        })
        .collect();
    for result in refiner.refine(&requests) {
        match result {
            Ok(r) => println!("{}", r.refined),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(())
}
