//! `prip serve` as a user runs it: the binary in front of a fake ComfyUI (a plain
//! socket answering with the recorded fixture), with a tiny checkpoint.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prip_test_support::models;
use serde_json::Value;

const PRIP: &str = env!("CARGO_BIN_EXE_prip");

fn fixture(rel: &str) -> String {
    let path = prip_test_support::fixtures_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads one HTTP/1.1 message with a Content-Length body: (head, body).
fn read_message(stream: &mut impl BufRead) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body).unwrap();
    (head, body)
}

/// A one-request-per-connection fake ComfyUI that reports each body it gets.
fn fake_comfyui() -> (String, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let answer = fixture("comfyui/prompt_response_200.json");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = BufReader::new(stream.unwrap());
            let (_, body) = read_message(&mut stream);
            let _ = tx.send(body);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            stream.get_mut().write_all(reply.as_bytes()).unwrap();
        }
    });
    (url, rx)
}

struct Serve {
    child: Child,
    addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &std::path::Path, home: &std::path::Path, upstream: &str, extra: &[&str]) -> Serve {
    let mut child = Command::new(PRIP)
        .args([
            "serve",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "7",
        ])
        .arg("--model")
        .arg(model)
        .args(extra)
        .env("PRIP_HOME", home)
        .env_remove("PRIP_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("prip serve exited before listening: {seen}");
        }
        if let Some(rest) = line.strip_prefix("prip serve: http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        seen.push_str(&line);
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Serve { child, addr }
}

fn post(addr: &str, path: &str, extra: &str, body: &str) -> (String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (head, body) = read_message(&mut BufReader::new(s));
    (head, serde_json::from_slice(&body).unwrap())
}

#[test]
fn serve_refines_comfyui_prompts_and_honours_opt_out() {
    let model = tempfile::tempdir().unwrap();
    models::write_tiny_checkpoint(model.path(), "").unwrap();
    let home = tempfile::tempdir().unwrap();
    let (upstream, bodies) = fake_comfyui();
    let proxy = serve(model.path(), home.path(), &upstream, &[]);
    let request = fixture("comfyui/prompt_request_txt2img_api.json");

    let (head, answer) = post(&proxy.addr, "/prompt", "", &request);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-prip: refined"),
        "{head}"
    );
    assert_eq!(
        answer,
        serde_json::from_str::<Value>(&fixture("comfyui/prompt_response_200.json")).unwrap()
    );
    let sent: Value = serde_json::from_slice(&bodies.recv().unwrap()).unwrap();
    let text = sent["prompt"]["6"]["inputs"]["text"].as_str().unwrap();
    assert!(text.starts_with("a (red:1.2) fox, embedding:foo"), "{text}");
    assert_eq!(sent["prompt"]["7"]["inputs"]["text"], "blurry");

    let (head, _) = post(&proxy.addr, "/prompt", "x-prip: off\r\n", &request);
    assert!(
        head.to_ascii_lowercase().contains("x-prip: skipped"),
        "{head}"
    );
    assert_eq!(bodies.recv().unwrap(), request.as_bytes());
}

#[test]
fn serve_config_mistakes_are_one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (&["serve"][..], "--upstream"),
        (
            &["serve", "--upstream", "ftp://x"][..],
            "scheme must be http or https",
        ),
        (
            &[
                "serve",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "0.0.0.0:7870",
            ][..],
            "--allow-public",
        ),
        (
            &[
                "serve",
                "--upstream",
                "http://127.0.0.1:1",
                "--prompts",
                "sideways",
            ][..],
            "sideways",
        ),
    ] {
        let out = Command::new(PRIP)
            .args(args)
            .env("PRIP_HOME", home.path())
            .env_remove("PRIP_CONFIG")
            .env_remove("PRIP_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("prip: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn serve_refines_through_a_refiner_library_like_the_built_in_refiner() {
    let model = tempfile::tempdir().unwrap();
    models::write_tiny_checkpoint(model.path(), "").unwrap();
    let home = tempfile::tempdir().unwrap();
    let request = fixture("comfyui/prompt_request_txt2img_api.json");
    let lib = prip_test_support::artifacts::cdylib();
    let mut texts = Vec::new();
    for extra in [vec![], vec!["--refiner-lib", lib.to_str().unwrap()]] {
        let (upstream, bodies) = fake_comfyui();
        let proxy = serve(model.path(), home.path(), &upstream, &extra);
        let (head, _) = post(&proxy.addr, "/prompt", "", &request);
        assert!(
            head.to_ascii_lowercase().contains("x-prip: refined"),
            "{head}"
        );
        let sent: Value = serde_json::from_slice(&bodies.recv().unwrap()).unwrap();
        texts.push(sent["prompt"]["6"]["inputs"]["text"].clone());
    }
    assert_eq!(texts[0], texts[1]);
}
