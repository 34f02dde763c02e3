//! Static files from `public_dir`: index.html at `/`, content types, ETag and
//! If-None-Match, HEAD, methods, and every way out of the root (dot segments, encoded
//! dots and slashes, absolute paths, symlinks) answered 404 without leaking the file
//! placed next to the root.

mod common;

use common::*;

#[test]
fn index_html_is_served_at_the_root() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), INDEX_HTML);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.header("content-length"),
        Some(INDEX_HTML.len().to_string().as_str())
    );
    assert_security_headers(&r);
    let etag = r.header("etag").expect("ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );

    let r = c.get("/index.html");
    assert_eq!(r.text(), INDEX_HTML);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    // A directory path serves its index.html too.
    let r = c.get("/docs/");
    assert_eq!((r.status, r.text().as_str()), (200, "<p>docs index</p>\n"));
}

#[test]
fn content_types_follow_the_extension() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for (path, content_type) in [
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/docs/readme.txt", "text/plain; charset=utf-8"),
        ("/data.bin", "application/octet-stream"),
    ] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        let expected = PUBLIC_FILES
            .iter()
            .find(|(p, _)| *p == &path[1..])
            .map(|(_, body)| body.as_bytes())
            .unwrap();
        assert_eq!(r.body, expected, "{path}");
        assert_security_headers(&r);
    }
}

#[test]
fn etag_and_if_none_match_give_304() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let r = c.get("/style.css");
    let etag = r.header("etag").expect("ETag").to_string();
    let other_etag = c.get("/app.js").header("etag").unwrap().to_string();
    assert_ne!(etag, other_etag, "different files, different ETags");

    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {etag}");
    for matching in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let r = c.request("GET", "/style.css", &[("If-None-Match", matching)], b"");
        assert_eq!(r.status, 304, "If-None-Match: {matching}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_security_headers(&r);
        assert!(!r.closes());
    }
    let r = c.request("GET", "/style.css", &[("If-None-Match", "\"stale\"")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body { color: #222; }\n");
    // HEAD with a matching ETag is a 304 as well.
    let r = c.request("HEAD", "/style.css", &[("If-None-Match", &etag)], b"");
    assert_eq!(r.status, 304);
    // The connection is still in sync.
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn head_gives_the_headers_of_get_without_the_body() {
    let server = TestServer::start("");
    let mut c = server.connect();
    let get = c.get("/app.js");
    let head = c.request("HEAD", "/app.js", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in ["content-type", "content-length", "etag"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_security_headers(&head);
    assert_eq!(c.get("/healthz").status, 200, "no stray body after HEAD");
}

#[test]
fn only_get_and_head_are_allowed() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = c.request(method, "/index.html", &[], b"");
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn missing_and_hidden_files_are_404() {
    let server = TestServer::start("");
    let mut c = server.connect();
    for path in [
        "/missing.html",
        "/.hidden",
        "/docs/missing",
        "/docs",
        "/docs/..",
    ] {
        let r = c.get(path);
        assert_error(&r, 404, "not_found");
    }
}

#[test]
fn nothing_outside_public_dir_is_ever_served() {
    let server = TestServer::start("");
    let secret = server.dir().join("secret.txt");
    let secret_abs = secret.to_str().expect("utf-8 temp path").to_string();
    let encoded_abs = secret_abs.replace('/', "%2F");
    let paths = vec![
        "/../secret.txt".to_string(),
        "/docs/../../secret.txt".to_string(),
        "/%2e%2e/secret.txt".to_string(),
        "/%2E%2E/secret.txt".to_string(),
        "/.%2e/secret.txt".to_string(),
        "/%2e%2e%2fsecret.txt".to_string(),
        "/..%2fsecret.txt".to_string(),
        "/docs/..%2F..%2Fsecret.txt".to_string(),
        "/docs%2f..%2f..%2fsecret.txt".to_string(),
        "/%2e%2e%5csecret.txt".to_string(),
        "/..%5csecret.txt".to_string(),
        "/leak.txt".to_string(),
        "/outside/secret.txt".to_string(),
        "/outside/public/../secret.txt".to_string(),
        format!("/{encoded_abs}"),
        format!("/{}", secret_abs.trim_start_matches('/')),
        format!("/{secret_abs}"),
        "/%00/../secret.txt".to_string(),
        "/secret.txt".to_string(),
    ];
    for path in &paths {
        let mut c = server.connect();
        let r = c.get(path);
        assert!(
            !r.text().contains(SECRET_FILE_CONTENT),
            "{path} leaked the secret file"
        );
        assert_error(&r, 404, "not_found");
    }
    // Absolute-form and backslash targets are refused by the parser, never served.
    for raw in [
        format!("GET file://{secret_abs} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        "GET /..\\secret.txt HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
    ] {
        let mut c = server.connect();
        c.send(raw.as_bytes());
        let r = c.read_response();
        assert!(!r.text().contains(SECRET_FILE_CONTENT), "{raw:?} leaked");
        assert!(r.status == 400 || r.status == 404, "{raw:?}: {}", r.status);
    }
    assert!(
        server.log().contains("resolves outside public_dir"),
        "symlink escapes are logged"
    );
}

#[test]
fn large_answers_go_out_whole_over_several_loop_turns() {
    // Pipelined answers far larger than what one loop turn writes to a connection:
    // every byte arrives, in order, although no writable edge announces the rest.
    let server = TestServer::start("");
    let file: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(server.public_dir().join("large.bin"), &file).unwrap();
    let mut c = server.connect();
    let one = c.build_request("GET", "/large.bin", &[], b"");
    c.send(&[one.clone(), one.clone(), one].concat());
    for _ in 0..3 {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(r.body == file, "the file arrived changed or cut");
    }
    assert_eq!(c.get("/healthz").status, 200);
}
