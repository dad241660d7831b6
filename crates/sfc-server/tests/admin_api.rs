//! The admin HTTP listener over real HTTP (ureq on 127.0.0.1): health checks, the token
//! and the session cookie, CSRF, the JSON API and its OpenAPI document, the pages'
//! actions, and `/metrics` read by a Prometheus text-format parser. Clients and uploads
//! come from the real protocol through the test client in `common`.
#![cfg(test)]

mod common;

use common::*;
use serde_json::Value;
use sfc_proto::{ClientId, Response};
use sfc_server::admin::{
    API_ROUTES, BLOCKED_VERDICT_DELAY, COOKIE, LOGIN_FAILURES_PER_MINUTE, OPENAPI,
};
use sfc_server::{AdminConfig, ServerConfig};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

fn with_admin(config: &mut ServerConfig) {
    config.admin = Some(AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        config.data_dir.join("admin.token"),
    ));
}

struct Admin {
    server: TestServer,
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Admin {
    fn start() -> Self {
        Self::start_with(with_admin)
    }

    /// `tweak` must turn the admin listener on (as [`with_admin`] does).
    fn start_with(tweak: fn(&mut ServerConfig)) -> Self {
        let server = TestServer::start_with(tweak);
        let addr: SocketAddr = server.server.as_ref().unwrap().admin_addr().unwrap();
        let token = std::fs::read_to_string(server.root().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Admin {
            server,
            base: format!("http://{addr}"),
            token,
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// GET with the token: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(self.url(path))
            .header("Authorization", self.bearer())
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn delete(&self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .delete(self.url(path))
            .header("Authorization", self.bearer())
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn anonymous(&self, path: &str) -> u16 {
        self.agent
            .get(self.url(path))
            .call()
            .unwrap()
            .status()
            .as_u16()
    }

    /// Logs in at the form; the session cookie.
    fn login(&self) -> String {
        let response = self
            .agent
            .post(self.url("/login"))
            .send_form([("token", self.token.as_str())])
            .unwrap();
        assert_eq!(response.status().as_u16(), 303);
        let set_cookie = response
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        let pair = set_cookie.split(';').next().unwrap();
        assert!(pair.starts_with(&format!("{COOKIE}=")));
        pair.to_owned()
    }

    fn page(&self, cookie: &str, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(self.url(path))
            .header("Cookie", cookie)
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }
}

/// The CSRF token a page carries.
fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    page[start..start + 64].to_owned()
}

fn enrolled(admin: &Admin, user: &str) -> (Conn, ClientId, sfc_crypto::AesKey) {
    let mut conn = admin.server.connect();
    let (id, key) = enroll(&mut conn, user);
    (conn, id, key)
}

/// Stores `plain` in 4,096-byte packets (the metrics test counts them) and confirms it.
fn store_file(conn: &mut Conn, id: ClientId, key: &sfc_crypto::AesKey, file: &str, plain: &[u8]) {
    let reply = upload(conn, id, key, file, plain, 4096);
    assert_received(&reply, id, file, plain);
    assert_eq!(
        conn.call(&file_name_request(id, 900, file)),
        Response::Ack {
            client_id: Some(id)
        }
    );
}

fn query(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn health_checks_are_open_and_everything_else_needs_the_token() {
    let admin = Admin::start();
    assert_eq!(admin.anonymous("/healthz"), 200);
    assert_eq!(admin.anonymous("/readyz"), 200);
    assert_eq!(admin.anonymous("/api/v1/openapi.json"), 200);
    assert_eq!(admin.anonymous("/login"), 200);
    let paths = [
        "/metrics",
        "/api/v1/stats",
        "/api/v1/clients",
        "/api/v1/uploads",
        "/api/v1/failures",
        &format!("/api/v1/clients/{}/files", "ab".repeat(16)),
    ];
    for path in &paths {
        assert_eq!(admin.anonymous(path), 401, "{path}");
    }
    // A wrong token counts as a failed login (within the allowance at once here).
    for path in paths.iter().take(LOGIN_FAILURES_PER_MINUTE as usize) {
        let wrong = admin
            .agent
            .get(admin.url(path))
            .header("Authorization", "Bearer not-the-token")
            .call()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(wrong, 401, "{path}");
    }
    // Pages send a browser without a session to the login form.
    for path in ["/", "/clients"] {
        let response = admin.agent.get(admin.url(path)).call().unwrap();
        assert_eq!(response.status().as_u16(), 303, "{path}");
        assert_eq!(response.headers().get("location").unwrap(), "/login");
    }
    // A forged cookie is no session.
    let (status, _) = admin.page(&format!("{COOKIE}=forged"), "/clients");
    assert_eq!(status, 303);
    // Security headers on every response.
    let response = admin.agent.get(admin.url("/login")).call().unwrap();
    let csp = response.headers().get("content-security-policy").unwrap();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));
    assert_eq!(response.headers().get("x-frame-options").unwrap(), "DENY");
}

/// Credentials are checked before anything else of a request is read: a stranger's
/// malformed query or form gets the same answer as a well-formed one (401, or the login
/// form), not a 400, 415 or 422 that tells it what a valid request looks like.
#[test]
fn credentials_are_checked_before_the_query_or_the_form() {
    let admin = Admin::start();
    let id = "ab".repeat(16);
    let malformed = [
        ("GET", "/api/v1/clients?limit=many".to_owned()),
        ("GET", format!("/api/v1/clients/{id}/files?offset=-1")),
        ("GET", "/api/v1/failures?offset=x".to_owned()),
        ("GET", format!("/api/v1/clients/{id}/file")),
        ("DELETE", format!("/api/v1/clients/{id}/file")),
    ];
    for (method, path) in &malformed {
        let call = |authorization: Option<String>| {
            let request = ureq::http::Request::builder()
                .method(*method)
                .uri(admin.url(path));
            let request = match authorization {
                Some(value) => request.header("Authorization", value),
                None => request,
            };
            let response = admin.agent.run(request.body(()).unwrap()).unwrap();
            let challenge = response.headers().get("www-authenticate").cloned();
            (response.status().as_u16(), challenge)
        };
        // The request is malformed indeed: the operator gets 400 for it.
        assert_eq!(call(Some(admin.bearer())).0, 400, "{method} {path}");
        let (status, challenge) = call(None);
        assert_eq!(status, 401, "{method} {path}");
        assert_eq!(challenge.unwrap(), "Bearer", "{method} {path}");
    }
    // The operator's 400 is the API's error JSON, as the OpenAPI document says.
    for (status, body) in [
        admin.get("/api/v1/failures?offset=x"),
        admin.delete(&format!("/api/v1/clients/{id}/file")),
    ] {
        assert_eq!(status, 400, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // A page with a malformed query sends a browser without a session to the login form.
    let response = admin
        .agent
        .get(admin.url("/clients?page=x"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers().get("location").unwrap(), "/login");
    let cookie = admin.login();
    assert_eq!(admin.page(&cookie, "/clients?page=x").0, 400);
    // A form action without a session is refused as such, whatever its body.
    for path in [
        format!("/clients/{id}/remove"),
        format!("/clients/{id}/delete"),
    ] {
        let response = admin
            .agent
            .post(admin.url(&path))
            .header("Content-Type", "text/plain")
            .send("not a form")
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
    }
    // A wrong token at the login form: 401 with its challenge, as everywhere else.
    let response = admin
        .agent
        .post(admin.url("/login"))
        .send_form([("token", "not-the-token")])
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
}

/// Credentials of another scheme (a reverse proxy's Basic ones, which the browser sends
/// with every request) are no try of the token: the session cookie decides, and nothing
/// counts as a failed login.
#[test]
fn another_authorization_scheme_leaves_the_session_to_the_cookie() {
    let admin = Admin::start();
    let cookie = admin.login();
    for _ in 0..2 * LOGIN_FAILURES_PER_MINUTE {
        let response = admin
            .agent
            .get(admin.url("/clients"))
            .header("Cookie", &cookie)
            .header("Authorization", "Basic b3BlcmF0b3I6cHJveHk=")
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    let anonymous = admin
        .agent
        .get(admin.url("/api/v1/stats"))
        .header("Authorization", "Basic b3BlcmF0b3I6cHJveHk=")
        .call()
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // No failed login was counted: the token is answered at once.
    let started = std::time::Instant::now();
    assert_eq!(admin.get("/api/v1/stats").0, 200);
    assert!(started.elapsed() < BLOCKED_VERDICT_DELAY);
    let failures = admin.json("/api/v1/failures");
    assert_eq!(failures["total"], 0, "{failures}");
}

/// A login another site's page posts (a browser says so in `Sec-Fetch-Site`) is refused
/// unread: such a page cannot spend the failed logins of the operator's address.
#[test]
fn a_login_posted_from_another_site_is_refused_unread() {
    let admin = Admin::start();
    let post = |site: &str, token: &str| {
        admin
            .agent
            .post(admin.url("/login"))
            .header("Sec-Fetch-Site", site)
            .send_form([("token", token)])
            .unwrap()
            .status()
            .as_u16()
    };
    for site in ["cross-site", "same-site"] {
        for _ in 0..2 * LOGIN_FAILURES_PER_MINUTE {
            assert_eq!(post(site, "not-the-token"), 403);
        }
        assert_eq!(post(site, &admin.token), 403);
        // Refused before its body is read: a body that is no form changes nothing.
        let not_a_form = admin
            .agent
            .post(admin.url("/login"))
            .header("Sec-Fetch-Site", site)
            .header("Content-Type", "text/plain")
            .send("token=x")
            .unwrap();
        assert_eq!(not_a_form.status().as_u16(), 403);
    }
    let started = std::time::Instant::now();
    assert_eq!(post("same-origin", &admin.token), 303);
    assert!(
        started.elapsed() < BLOCKED_VERDICT_DELAY,
        "no failure was counted"
    );
    assert_eq!(admin.json("/api/v1/failures")["total"], 0);
}

/// Connections refused before anything is read cost their sender nothing: the failure
/// list takes them as the log does (one entry per address, reason and interval, with a
/// count), so a flood of them pushes no other failure off it.
#[test]
fn refused_connections_do_not_flush_the_failure_list() {
    let admin = Admin::start_with(|config| {
        with_admin(config);
        config.max_connections_per_address = 1;
    });
    let response = admin
        .agent
        .post(admin.url("/login"))
        .send_form([("token", "wrong")])
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let mut held = admin.server.connect();
    assert!(matches!(
        held.call(&register_request("holder")),
        Response::Registered { .. }
    ));
    for i in 0..150 {
        let mut refused = admin.server.connect();
        assert!(refused.closed_within(Duration::from_secs(5)), "{i}");
    }
    assert_eq!(
        sample(
            &scrape(&admin),
            "sfc_connections_refused_total",
            Some(("reason", "per-address"))
        ),
        150.0,
        "every refusal is counted"
    );
    let failures = admin.json("/api/v1/failures?limit=100");
    let items = failures["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"admin login"), "{failures}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "connection refused").count(),
        1,
        "{failures}"
    );
}

#[test]
fn failed_logins_are_limited_per_address() {
    let admin = Admin::start();
    for _ in 0..LOGIN_FAILURES_PER_MINUTE {
        let response = admin
            .agent
            .post(admin.url("/login"))
            .send_form([("token", "wrong")])
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    // Now a wrong token waits for the next try (one every 12 s), at the form and the API,
    // and every verdict waits first (so a refusal tells a guesser nothing sooner)...
    let asked = std::time::Instant::now();
    let response = admin
        .agent
        .post(admin.url("/login"))
        .send_form([("token", "wrong")])
        .unwrap();
    assert!(asked.elapsed() >= BLOCKED_VERDICT_DELAY);
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").unwrap(), "12");
    let response = admin
        .agent
        .get(admin.url("/api/v1/stats"))
        .header("Authorization", "Bearer wrong")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").unwrap(), "12");
    // ...but the right one still gets in, after the same wait: someone else on the
    // operator's address (every local user, on a loopback listener) cannot lock the
    // operator out.
    let asked = std::time::Instant::now();
    let response = admin
        .agent
        .post(admin.url("/login"))
        .send_form([("token", admin.token.as_str())])
        .unwrap();
    assert!(asked.elapsed() >= BLOCKED_VERDICT_DELAY);
    assert_eq!(response.status().as_u16(), 303);
    let asked = std::time::Instant::now();
    assert_eq!(admin.get("/api/v1/stats").0, 200);
    assert!(asked.elapsed() >= BLOCKED_VERDICT_DELAY);
    // The refused tries count as failed logins too (5 + 2); the list gets one entry per
    // 10 s for them, with a count (no one without a token can flush it).
    assert_eq!(
        sample(&scrape(&admin), "sfc_admin_login_failures_total", None),
        (LOGIN_FAILURES_PER_MINUTE + 2) as f64
    );
    let failures = admin.json("/api/v1/failures?limit=100");
    let beyond = failures["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["detail"].as_str().unwrap().contains("beyond the limit"))
        .count();
    assert_eq!(beyond, 1, "{failures}");
    // The scheme's name in any case (RFC 7235).
    let response = admin
        .agent
        .get(admin.url("/api/v1/stats"))
        .header("Authorization", format!("bearer {}", admin.token))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// A body larger than any form is refused before it is read, token or not; a session
/// cookie is found among other cookies of the same name (another site on the same host).
#[test]
fn large_bodies_are_refused_and_every_session_cookie_is_tried() {
    let admin = Admin::start();
    let huge = "x".repeat(64 * 1024);
    // 413, or the connection closed with the body unread (whichever the client sees first).
    if let Ok(response) = admin
        .agent
        .post(admin.url("/login"))
        .send_form([("token", huge.as_str())])
    {
        assert_eq!(response.status().as_u16(), 413);
    }
    assert_eq!(
        sample(&scrape(&admin), "sfc_admin_login_failures_total", None),
        0.0,
        "the body was not read as a login"
    );
    // A request head larger than the listener reads (16 KiB) is refused before any
    // handler, rather than buffered (hyper's default: ~400 KiB per connection).
    use std::io::{Read, Write};
    let addr = admin.base.trim_start_matches("http://");
    let mut http = std::net::TcpStream::connect(addr).unwrap();
    // The server answers and closes once it has read 16 KiB: the rest of this write, and
    // then the answer, may meet a reset connection. Either way it is not served.
    let _ = write!(
        http,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
        "x".repeat(20 * 1024)
    );
    let mut answer = Vec::new();
    let _ = http.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // A head that is no HTTP gets hyper's own 400. Both answers, written by hyper
    // without the router, are counted as every other response is.
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    let _ = garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n");
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    let counted = |status: &str| {
        sample(
            &scrape(&admin),
            "sfc_admin_requests_total",
            Some(("status", status)),
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || counted("431") == 1.0
            && counted("400") == 1.0),
        "431: {}, 400: {}",
        counted("431"),
        counted("400")
    );
    // HTTP/2's preface gets no answer (the listener speaks HTTP/1 only): none counted.
    let mut h2 = std::net::TcpStream::connect(addr).unwrap();
    let _ = h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut answer = Vec::new();
    let _ = h2.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{answer:?}");
    // The connection's end comes after its count.
    assert_eq!(counted("400"), 1.0);

    let session = admin.login();
    let planted = format!("{COOKIE}=planted-by-another-site; {session}");
    let (status, body) = admin.page(&planted, "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("csrf"), "logged in: {body}");
}

#[test]
fn the_api_lists_pages_downloads_deletes_and_frees_names() {
    let admin = Admin::start();
    let (mut alice_conn, alice, alice_key) = enrolled(&admin, "alice");
    let (_bob_conn, bob, _) = enrolled(&admin, "bob");
    let (_carol_conn, _carol, _) = enrolled(&admin, "carol");
    let contents: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("report {i}/a b&c.bin"),
                data(10_000 + i * 5_000, i as u32),
            )
        })
        .collect();
    for (file, plain) in &contents {
        store_file(&mut alice_conn, alice, &alice_key, file, plain);
    }

    let stats = admin.json("/api/v1/stats");
    assert_eq!(stats["clients"], 3);
    assert_eq!(stats["files"], 3);
    let total: usize = contents.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(stats["bytes_stored"], total);

    // Clients, paginated, by name; the same JSON as `sfc-server clients --json`.
    let first = admin.json("/api/v1/clients?limit=2");
    assert_eq!(first["total"], 3);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["items"][0]["name"], "alice");
    assert_eq!(first["items"][0]["files"], 3);
    assert_eq!(first["items"][0]["bytes"], total);
    assert_eq!(
        first["items"][0]["key_fingerprint"].as_str().unwrap().len(),
        64
    );
    let rest = admin.json("/api/v1/clients?offset=2&limit=2");
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["name"], "carol");
    let cli = sfc_server::admin::clients_in(admin.server.root(), &admin.server.database).unwrap();
    let all = admin.json("/api/v1/clients?limit=500");
    assert_eq!(all["items"], serde_json::to_value(&cli).unwrap());
    assert_eq!(admin.json(&format!("/api/v1/clients/{bob}"))["name"], "bob");
    assert_eq!(
        admin.get(&format!("/api/v1/clients/{}", "00".repeat(16))).0,
        404
    );
    assert_eq!(admin.get("/api/v1/clients/not-an-id").0, 404);

    // One client's files, paginated.
    let files = admin.json(&format!("/api/v1/clients/{alice}/files?limit=2"));
    assert_eq!(files["total"], 3);
    assert_eq!(files["items"].as_array().unwrap().len(), 2);
    assert_eq!(files["items"][0]["file_name"], contents[0].0);
    assert_eq!(files["items"][0]["verified"], true);
    let files = admin.json(&format!("/api/v1/clients/{alice}/files?offset=2"));
    assert_eq!(files["items"][0]["file_name"], contents[2].0);

    // Download: the very bytes the client sent.
    for (file, plain) in &contents {
        let mut response = admin
            .agent
            .get(admin.url(&format!(
                "/api/v1/clients/{alice}/file?name={}",
                query(file)
            )))
            .header("Authorization", admin.bearer())
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let disposition = response.headers().get("content-disposition").unwrap();
        assert!(disposition.to_str().unwrap().starts_with("attachment"));
        assert!(
            response.body_mut().read_to_vec().unwrap() == *plain,
            "{file}"
        );
    }
    assert_eq!(
        admin
            .get(&format!("/api/v1/clients/{alice}/file?name=nope"))
            .0,
        404
    );

    // Delete one file: row and stored file gone.
    let (file, _) = &contents[1];
    let row = admin.server.db().file(&alice, file).unwrap().unwrap();
    assert!(admin.server.root().join(&row.path).exists());
    let (status, body) = admin.delete(&format!(
        "/api/v1/clients/{alice}/file?name={}",
        query(file)
    ));
    assert_eq!(status, 200, "{body}");
    assert!(admin.server.db().file(&alice, file).unwrap().is_none());
    assert!(!admin.server.root().join(&row.path).exists());
    assert_eq!(
        admin
            .delete(&format!(
                "/api/v1/clients/{alice}/file?name={}",
                query(file)
            ))
            .0,
        404
    );
    assert_eq!(admin.json("/api/v1/stats")["files"], 2);

    // Remove the client: its rows and files go, its name is free again.
    let paths: Vec<String> = admin
        .server
        .db()
        .files()
        .unwrap()
        .into_iter()
        .filter(|f| f.client_id == alice)
        .map(|f| f.path)
        .collect();
    assert_eq!(paths.len(), 2);
    let (status, body) = admin.delete(&format!("/api/v1/clients/{alice}"));
    assert_eq!(status, 200, "{body}");
    let removed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(removed["files"].as_array().unwrap().len(), 2);
    assert!(admin.server.db().client(&alice).unwrap().is_none());
    for path in &paths {
        assert!(!admin.server.root().join(path).exists(), "{path}");
    }
    // Its folder too (it was empty).
    let folder = std::path::Path::new(&paths[0]).parent().unwrap();
    assert!(folder.ends_with(alice.to_hex()), "{}", folder.display());
    assert!(!admin.server.root().join(folder).exists());
    assert_eq!(admin.delete(&format!("/api/v1/clients/{alice}")).0, 404);
    let mut conn = admin.server.connect();
    let Response::Registered { client_id } = conn.call(&register_request("alice")) else {
        panic!("the name alice was not freed")
    };
    assert_ne!(client_id, alice);
    // bob is untouched.
    assert!(admin.server.db().client(&bob).unwrap().is_some());
}

/// A file whose row is there but whose stored content is gone (removed behind the
/// server's back, or by a delete racing the download) is a 404 that says so, not a 500.
#[test]
fn a_download_of_a_file_whose_content_is_missing_is_a_404() {
    let admin = Admin::start();
    let (mut conn, id, key) = enrolled(&admin, "dora");
    store_file(&mut conn, id, &key, "gone.bin", &data(3_000, 9));
    let row = admin.server.db().file(&id, "gone.bin").unwrap().unwrap();
    std::fs::remove_file(admin.server.root().join(&row.path)).unwrap();
    let (status, body) = admin.get(&format!("/api/v1/clients/{id}/file?name=gone.bin"));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("stored content is missing"), "{body}");
}

#[test]
fn actions_with_a_session_cookie_need_the_csrf_token() {
    let admin = Admin::start();
    let (mut conn, id, key) = enrolled(&admin, "dora");
    store_file(&mut conn, id, &key, "a.txt", b"first");
    store_file(&mut conn, id, &key, "b.txt", b"second");
    let cookie = admin.login();
    let (status, page) = admin.page(&cookie, "/");
    assert_eq!(status, 200);
    assert!(page.contains("Dashboard"));
    let csrf = csrf_of(&page);
    let (status, page) = admin.page(&cookie, "/clients");
    assert_eq!(status, 200);
    assert!(page.contains("dora") && page.contains(&id.to_hex()));
    let (status, page) = admin.page(&cookie, &format!("/clients/{id}"));
    assert_eq!(status, 200);
    assert!(page.contains("a.txt") && page.contains("b.txt"));
    // The cookie reads the API too (the dashboard's refresh) …
    let (status, _) = admin.page(&cookie, "/api/v1/stats");
    assert_eq!(status, 200);
    // … but changes nothing without the CSRF token.
    for token in [None, Some("0".repeat(64))] {
        let mut request = admin
            .agent
            .delete(admin.url(&format!("/api/v1/clients/{id}/file?name=a.txt")))
            .header("Cookie", &cookie);
        if let Some(token) = &token {
            request = request.header("X-CSRF-Token", token);
        }
        assert_eq!(request.call().unwrap().status().as_u16(), 403);
        let response = admin
            .agent
            .post(admin.url(&format!("/clients/{id}/delete")))
            .header("Cookie", &cookie)
            .send_form([("name", "a.txt"), ("csrf", token.as_deref().unwrap_or(""))])
            .unwrap();
        assert_eq!(response.status().as_u16(), 403);
    }
    assert!(admin.server.db().file(&id, "a.txt").unwrap().is_some());
    // With it: the API and the page form both act.
    let response = admin
        .agent
        .delete(admin.url(&format!("/api/v1/clients/{id}/file?name=a.txt")))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(admin.server.db().file(&id, "a.txt").unwrap().is_none());
    let mut response = admin
        .agent
        .get(admin.url(&format!("/clients/{id}/download?name=b.txt")))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(response.body_mut().read_to_vec().unwrap(), b"second");
    let response = admin
        .agent
        .post(admin.url(&format!("/clients/{id}/delete")))
        .header("Cookie", &cookie)
        .send_form([("name", "b.txt"), ("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert!(admin.server.db().file(&id, "b.txt").unwrap().is_none());
    // The actions that need nothing but the token take it as a header too, with no
    // form at all (a script's fetch); without either, they are refused.
    for token in [None, Some(csrf.as_str())] {
        let mut request = admin
            .agent
            .post(admin.url(&format!("/clients/{id}/remove")))
            .header("Cookie", &cookie);
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        let status = request.send_empty().unwrap().status().as_u16();
        assert_eq!(status, if token.is_some() { 303 } else { 403 });
    }
    assert!(admin.server.db().client(&id).unwrap().is_none());
    let (mut conn, id, key) = enrolled(&admin, "dora");
    store_file(&mut conn, id, &key, "c.txt", b"third");
    let response = admin
        .agent
        .post(admin.url(&format!("/clients/{id}/remove")))
        .header("Cookie", &cookie)
        .send_form([("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert!(admin.server.db().client(&id).unwrap().is_none());
    // Logging out ends the session (the token as a header alone here).
    let response = admin
        .agent
        .post(admin.url("/logout"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send_empty()
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(admin.page(&cookie, "/").0, 303);
}

/// An 828 is shown as an upload once the session has accepted it: a refused one (here
/// of an unknown client) is never shown, also when its connection ends before its
/// content (and so before its 1607).
#[test]
fn a_refused_packet_cut_short_is_not_left_shown_as_an_upload() {
    let admin = Admin::start();
    let stranger = ClientId([0x77; 16]);
    let cipher = vec![0u8; 2048];
    let packet = packets(stranger, "x.bin", 2000, &cipher, 2048, ContentSize::Whole)
        .pop()
        .unwrap();
    let mut conn = admin.server.connect();
    conn.send_raw(&packet[..packet.len() - 1000]);
    // Read and refused by now: the refusal is among the failures once its content is
    // there; until then, nothing from outside tells (a pause, never a false failure).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin.json("/api/v1/uploads"), serde_json::json!([]));
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin.json("/api/v1/uploads"), serde_json::json!([]));
    assert_eq!(admin.json("/api/v1/stats")["uploads_in_progress"], 0);
}

/// A packet accepted, then failed in its content (non-zero padding after the file's
/// last encrypted byte, rule S11), whose connection ends before the rest: its upload is
/// over, and no longer shown.
#[test]
fn a_packet_failed_mid_content_and_cut_short_is_not_left_shown() {
    let admin = Admin::start();
    let (mut conn, id, key) = enrolled(&admin, "padder");
    let plain = data(1000, 5);
    let cipher = encrypt(&key, &plain);
    let header = sfc_proto::FilePacketHeader {
        content_size: cipher.len() as u32,
        orig_file_size: plain.len() as u32,
        packet_number: 1,
        total_packets: 1,
        file_name: name("padded.bin"),
    };
    let padding = [0x55u8; 4096];
    let content_len = (cipher.len() + padding.len()) as u32;
    let mut bytes = header.encode_prefix(id, content_len).to_vec();
    bytes.extend_from_slice(&cipher);
    bytes.extend_from_slice(&padding);
    conn.send_raw(&bytes[..bytes.len() - 1]);
    assert!(eventually(Duration::from_secs(10), || {
        admin.json("/api/v1/uploads").as_array().unwrap().len() == 1
    }));
    drop(conn);
    assert!(
        eventually(Duration::from_secs(10), || {
            admin.json("/api/v1/uploads") == serde_json::json!([])
        }),
        "{}",
        admin.json("/api/v1/uploads")
    );
}

/// A packet from a second connection of a client while another connection receives one
/// of its packets is refused (1607), whatever its file: the upload under way stays shown
/// as it was, also
/// when the refused connection ends mid-content, and when it is stored its duration is
/// recorded.
#[test]
fn a_packet_refused_for_another_connection_s_upload_leaves_that_upload_shown() {
    let admin = Admin::start();
    let (mut a, id, key) = enrolled(&admin, "pat");
    let plain = data(100_000, 2);
    let cipher = encrypt(&key, &plain);
    let huge = one_packet(id, "a.bin", plain.len(), &cipher);
    a.send_raw(&huge[..50_000]);
    admin.server.wait_for_upload_start(id);
    let shown = || {
        let uploads = admin.json("/api/v1/uploads");
        uploads.as_array().unwrap().len() == 1 && uploads[0]["file_name"] == "a.bin"
    };
    assert!(eventually(Duration::from_secs(10), &shown));
    // Another file: it would replace the upload shown if it were shown before the
    // session refused it.
    let other = one_packet(id, "b.bin", plain.len(), &cipher);
    let mut b = admin.server.connect();
    b.send_raw(&other);
    assert_eq!(b.recv(), Response::ServerError);
    assert!(shown(), "{}", admin.json("/api/v1/uploads"));
    let mut c = admin.server.connect();
    c.send_raw(&huge[..60_000]);
    std::thread::sleep(Duration::from_millis(300));
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert!(shown(), "{}", admin.json("/api/v1/uploads"));
    a.send_raw(&huge[50_000..]);
    assert_received(&a.recv(), id, "a.bin", &plain);
    assert_eq!(
        sample(&scrape(&admin), "sfc_upload_duration_seconds", None),
        1.0,
        "the stored upload's duration is recorded"
    );
}

/// Removing a client whose upload waits between packets (a connection-per-request
/// client) ends that upload, and it is no longer shown as in progress.
#[test]
fn removing_a_client_ends_its_upload_in_the_live_view() {
    let admin = Admin::start();
    let (_, id, key) = enrolled(&admin, "paused");
    let plain = data(30_000, 7);
    let cipher = encrypt(&key, &plain);
    let packets = packets(id, "p.bin", plain.len(), &cipher, 4096, ContentSize::Whole);
    let mut first = admin.server.connect();
    first.send_raw(&packets[0]);
    assert_eq!(first.recv(), Response::PacketReceived { client_id: id });
    drop(first);
    assert_eq!(admin.json("/api/v1/uploads").as_array().unwrap().len(), 1);
    let (status, body) = admin.delete(&format!("/api/v1/clients/{id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin.json("/api/v1/uploads"), serde_json::json!([]));
    assert_eq!(admin.json("/api/v1/stats")["uploads_in_progress"], 0);
}

#[test]
fn uploads_in_progress_and_failures_are_shown_live() {
    let admin = Admin::start();
    let (mut conn, id, key) = enrolled(&admin, "erin");
    store_file(&mut conn, id, &key, "old.bin", &data(100, 1));
    let plain = data(30_000, 7);
    let cipher = encrypt(&key, &plain);
    let packets = packets(
        id,
        "big.bin",
        plain.len(),
        &cipher,
        4096,
        ContentSize::Whole,
    );
    assert!(packets.len() > 4);
    for packet in &packets[..3] {
        conn.send_raw(packet);
    }
    assert!(eventually(Duration::from_secs(10), || {
        let uploads = admin.json("/api/v1/uploads");
        uploads.as_array().unwrap().len() == 1 && uploads[0]["packets_received"] == 3
    }));
    let uploads = admin.json("/api/v1/uploads");
    assert_eq!(uploads[0]["client_name"], "erin");
    assert_eq!(uploads[0]["file_name"], "big.bin");
    assert_eq!(uploads[0]["total_packets"], packets.len());
    assert_eq!(uploads[0]["bytes_received"], 3 * 4096);
    assert_eq!(admin.json("/api/v1/stats")["uploads_in_progress"], 1);
    // Half a packet: the connection holds the upload while the rest streams in. The
    // client cannot be removed meanwhile (its upload would finish into nothing).
    let (head, tail) = packets[3].split_at(packets[3].len() / 2);
    let received = |admin: &Admin| {
        let (_, body) = admin.get("/metrics");
        let scraped =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
        sample(&scraped, "sfc_received_bytes_total", None)
    };
    let before = received(&admin);
    conn.send_raw(head);
    // The header is decoded and the upload checked out right after the read is counted
    // (no await in between); the pause only covers the other thread's scheduling.
    assert!(eventually(Duration::from_secs(10), || received(&admin)
        >= before + head.len() as f64));
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = admin.delete(&format!("/api/v1/clients/{id}"));
    assert_eq!(status, 409, "{body}");
    assert!(admin.server.db().client(&id).unwrap().is_some());
    // Another of its files can be deleted, and the upload goes on.
    let (status, body) = admin.delete(&format!("/api/v1/clients/{id}/file?name=old.bin"));
    assert_eq!(status, 200, "{body}");
    assert!(admin.server.db().file(&id, "old.bin").unwrap().is_none());
    conn.send_raw(tail);
    for packet in &packets[4..] {
        conn.send_raw(packet);
    }
    assert_received(&conn.recv(), id, "big.bin", &plain);
    assert_eq!(admin.json("/api/v1/uploads"), serde_json::json!([]));
    // A checksum mismatch and a refused request show up among the failures.
    // (901 is answered only as the first request of a connection.)
    let mut retry = admin.server.connect();
    assert_eq!(
        retry.call(&file_name_request(id, 901, "big.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    let mut other = admin.server.connect();
    assert!(matches!(
        other.call(&file_name_request(ClientId([9; 16]), 900, "x")),
        Response::ServerError
    ));
    let failures = admin.json("/api/v1/failures");
    let kinds: Vec<&str> = failures["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().any(|k| k.contains("901")), "{kinds:?}");
    assert!(kinds.iter().any(|k| k.contains("1607")), "{kinds:?}");
    assert_eq!(failures["items"][0]["kind"], "900 → 1607", "newest first");
}

fn scrape(admin: &Admin) -> prometheus_parse::Scrape {
    let (status, body) = admin.get("/metrics");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            other => panic!("{name}: {other:?}"),
        })
        .sum()
}

#[test]
fn metrics_parse_and_move_with_the_traffic() {
    let admin = Admin::start();
    let before = scrape(&admin);
    assert_eq!(
        sample(&before, "sfc_requests_total", Some(("code", "825"))),
        0.0
    );
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric.starts_with("sfc_build_info")));
    let (mut conn, id, key) = enrolled(&admin, "fred");
    store_file(&mut conn, id, &key, "m.bin", &data(50_000, 3));
    assert_eq!(
        conn.call(&file_name_request(id, 902, "m.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    let mut again = admin.server.connect();
    assert_eq!(
        again.call(&register_request("fred")),
        Response::RegistrationFailed
    );
    let after = scrape(&admin);
    assert_eq!(
        sample(&after, "sfc_requests_total", Some(("code", "825"))),
        2.0
    );
    assert_eq!(
        sample(&after, "sfc_replies_total", Some(("code", "1600"))),
        1.0
    );
    assert_eq!(
        sample(&after, "sfc_replies_total", Some(("code", "1601"))),
        1.0
    );
    assert_eq!(
        sample(&after, "sfc_replies_total", Some(("code", "1603"))),
        1.0
    );
    // 50,000 bytes are 50,016 encrypted, 13 packets of 4,096: 12 without a reply (their
    // counts reach the monitor once per socket read, not once per packet).
    assert_eq!(
        sample(&after, "sfc_requests_total", Some(("code", "828"))),
        13.0
    );
    assert_eq!(
        sample(&after, "sfc_replies_total", Some(("code", "none"))),
        12.0
    );
    assert_eq!(
        sample(&after, "sfc_checksum_failures_total", Some(("code", "902"))),
        1.0
    );
    assert!(sample(&after, "sfc_connections_accepted_total", None) >= 2.0);
    assert!(sample(&after, "sfc_received_bytes_total", None) > 50_000.0);
    assert_eq!(sample(&after, "sfc_upload_size_bytes_count", None), 1.0);
    assert!(
        sample(
            &after,
            "sfc_storage_job_seconds_count",
            Some(("job", "end_packet"))
        ) >= 1.0
    );
    // The admin listener counts its own responses (the 200 of the first scrape at least).
    assert!(sample(&after, "sfc_admin_requests_total", Some(("status", "200"))) >= 1.0);
}

#[test]
fn the_openapi_document_describes_the_routes_and_the_json() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    // Every route is served as documented (not 404/405), and the JSON has exactly the
    // documented properties.
    let admin = Admin::start();
    let (mut conn, id, key) = enrolled(&admin, "gina");
    store_file(&mut conn, id, &key, "g.txt", b"g");
    let schema_keys = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let keys = |value: &Value| -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    };
    let stats = admin.json("/api/v1/stats");
    assert_eq!(keys(&stats), schema_keys("StatsView"));
    let clients = admin.json("/api/v1/clients");
    assert_eq!(keys(&clients), schema_keys("ClientPage"));
    assert_eq!(keys(&clients["items"][0]), schema_keys("ClientView"));
    let files = admin.json(&format!("/api/v1/clients/{id}/files"));
    assert_eq!(keys(&files["items"][0]), schema_keys("FileView"));
    assert_eq!(
        keys(&admin.json(&format!("/api/v1/clients/{id}"))),
        schema_keys("ClientView")
    );
    let mut open = admin.server.connect();
    assert!(matches!(
        open.call(&file_name_request(ClientId([7; 16]), 900, "x")),
        Response::ServerError
    ));
    let failures = admin.json("/api/v1/failures");
    assert_eq!(keys(&failures["items"][0]), schema_keys("FailureView"));
    let (_, body) = admin.delete(&format!("/api/v1/clients/{id}/file?name=g.txt"));
    assert_eq!(
        keys(&serde_json::from_str(&body).unwrap()),
        schema_keys("Removed")
    );
    let (status, body) = admin.get("/api/v1/clients/00/files");
    assert_eq!(status, 404);
    assert_eq!(
        keys(&serde_json::from_str(&body).unwrap()),
        schema_keys("Error")
    );
    for (method, path) in API_ROUTES {
        let path = path.replace("{id}", &id.to_hex()) + "?name=x";
        let response = admin
            .agent
            .run(
                ureq::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(admin.url(&path))
                    .header("Authorization", admin.bearer())
                    .body(())
                    .unwrap(),
            )
            .unwrap();
        assert_ne!(response.status().as_u16(), 405, "{method} {path}");
    }
    // The upload's fields, from a live one.
    let plain = data(20_000, 1);
    let (mut conn2, id2, key2) = enrolled(&admin, "hank");
    let cipher2 = encrypt(&key2, &plain);
    let parts = packets(
        id2,
        "u.bin",
        plain.len(),
        &cipher2,
        4096,
        ContentSize::Whole,
    );
    conn2.send_raw(&parts[0]);
    assert!(eventually(Duration::from_secs(10), || admin
        .json("/api/v1/uploads")
        .as_array()
        .is_some_and(|u| !u.is_empty())));
    let uploads = admin.json("/api/v1/uploads");
    assert_eq!(keys(&uploads[0]), schema_keys("UploadView"));
}

#[test]
fn a_public_admin_address_needs_tls_or_an_explicit_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    let mut admin = AdminConfig::new("0.0.0.0:0".parse().unwrap(), dir.path().join("t"));
    config.admin = Some(admin.clone());
    let error = sfc_server::RunningServer::start(config.clone()).unwrap_err();
    assert!(error.to_string().contains("--admin-insecure"), "{error}");
    assert!(!dir.path().join("t").exists());
    // Allowed with --admin-insecure (checked, not served: no test listens beyond
    // loopback).
    admin.insecure = true;
    assert_eq!(admin.check(), Ok(()));
    // The token file the server writes on its first start.
    config.admin = Some(AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("t"),
    ));
    let server = sfc_server::RunningServer::start(config).unwrap();
    assert!(server.admin_addr().is_some());
    let token = std::fs::read_to_string(dir.path().join("t")).unwrap();
    assert_eq!(token.trim().len(), 64);
    server.stop();
}

/// Like OpenSSH's StrictModes: a token file another user owns (that user chose the
/// token) stops the server at start-up. Only root can hand a file to another uid, so
/// the refusal is checked when the tests run as root (CI containers); the unit tests
/// `net::admin_http::auth::tests::*owner*` cover the rule itself everywhere.
#[test]
#[cfg(target_os = "linux")]
fn a_token_file_owned_by_another_user_stops_the_start_up() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.token");
    std::fs::write(&path, format!("{}\n", "t".repeat(40))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = config_for(dir.path());
    config.admin = Some(AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        path.clone(),
    ));
    if std::fs::metadata(&path).unwrap().uid() != 0 {
        // CI runs as root: there the test must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        eprintln!("not root: cannot hand the token file to another user; skipped");
        return;
    }
    std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
    let error = sfc_server::RunningServer::start(config.clone()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&path.display().to_string())
            && message.contains("owned by uid 4242")
            && message.contains("(uid 0)"),
        "{message}"
    );
    // Handed back to the server's user, the same file is accepted.
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    let server = sfc_server::RunningServer::start(config).unwrap();
    assert!(server.admin_addr().is_some());
    server.stop();
}

/// A server with the admin listener over the local stores behind a [`Faults`] switchboard
/// (database failures, a count of the file store's size queries).
struct FaultyAdmin {
    server: sfc_server::RunningServer,
    faults: std::sync::Arc<sfc_server::testing::Faults>,
    base: String,
    token: String,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

impl FaultyAdmin {
    fn start() -> Self {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let faults = std::sync::Arc::new(sfc_server::testing::Faults::default());
        let storage = faulty_local_storage(dir.path(), &faults);
        let mut config = config_for(dir.path());
        with_admin(&mut config);
        let server = sfc_server::RunningServer::start_with(config, storage).unwrap();
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let base = format!("http://{}", server.admin_addr().unwrap());
        FaultyAdmin {
            server,
            faults,
            base,
            token,
            agent,
            _dir: dir,
        }
    }

    /// `method` on `path` with the token: status and body.
    fn call(&self, method: &str, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let bearer = format!("Bearer {}", self.token);
        let sent = match method {
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &bearer)
                .call(),
            _ => self.agent.get(&url).header("Authorization", &bearer).call(),
        };
        let mut response = sent.unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.call("GET", path)
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn stop(self) {
        self.server.stop();
    }

    fn size_queries(&self) -> u64 {
        self.faults
            .size_queries
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn readyz_and_the_storage_error_count_follow_the_database() {
    use std::sync::atomic::Ordering;
    let admin = FaultyAdmin::start();
    let (server, faults) = (&admin.server, &admin.faults);
    let get = |path: &str| admin.get(path);
    assert_eq!(get("/readyz").0, 200);
    // Probes are shared: many looks at once cost the stores one probe (or a few, on a
    // machine so loaded that the looks spread over seconds).
    let probes = admin.size_queries();
    std::thread::scope(|scope| {
        let looks: Vec<_> = (0..20).map(|_| scope.spawn(|| get("/readyz").0)).collect();
        for look in looks {
            assert_eq!(look.join().unwrap(), 200);
        }
    });
    assert!(admin.size_queries() - probes <= 3);
    faults.db_down.store(true, Ordering::SeqCst);
    // A success answers for a second at most.
    assert!(eventually(Duration::from_secs(5), || get("/readyz").0 == 503));
    let (status, body) = get("/readyz");
    assert_eq!(status, 503);
    // Which store, not its error (the route needs no token).
    assert_eq!(body, "not ready: database\n");
    assert_eq!(get("/healthz").0, 200, "alive even when not ready");
    let mut conn = Conn::connect(server.addr());
    assert_eq!(conn.call(&register_request("kim")), Response::ServerError);
    let (_, metrics) = get("/metrics");
    let scraped =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        sample(&scraped, "sfc_storage_errors_total", Some(("code", "825"))),
        1.0
    );
    faults.db_recovers();
    assert_eq!(get("/readyz").0, 200);
    admin.stop();
}

/// A `/readyz` request that goes away while its probe waits on a slow store (a balancer's
/// time-out) does not stop the probe, and the next request takes that probe's answer
/// instead of starting another: retries never pile probes on a slow store.
#[test]
fn a_readyz_request_that_goes_away_leaves_its_probe_to_the_next() {
    use std::io::Write;
    let admin = FaultyAdmin::start();
    let faults = &admin.faults;
    faults.size_gate.hold_next();
    let before = admin.size_queries();
    let mut gone = std::net::TcpStream::connect(admin.server.admin_addr().unwrap()).unwrap();
    gone.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(
        faults.size_gate.wait_arrived(Duration::from_secs(20)),
        "the probe never reached the store"
    );
    drop(gone);
    // Time for the listener to see the connection closed and drop its request.
    std::thread::sleep(Duration::from_millis(500));
    std::thread::scope(|scope| {
        let next = scope.spawn(|| admin.get("/readyz").0);
        std::thread::sleep(Duration::from_millis(500));
        faults.size_gate.open();
        assert_eq!(next.join().unwrap(), 200);
    });
    assert_eq!(
        admin.size_queries() - before,
        1,
        "one probe for both requests"
    );
    admin.stop();
}

/// One overview pass at a time: a request that needs a pass begun after a change waits
/// for the pass under way (begun before it) to end, then starts its own; it does not
/// start a second one beside it (on a busy server, a pass per request of the client
/// list would pile up on the store).
#[test]
fn a_request_needing_a_newer_overview_waits_for_the_running_pass() {
    let admin = FaultyAdmin::start();
    let faults = &admin.faults;
    let mut conn = Conn::connect(admin.server.addr());
    let (id, key) = enroll(&mut conn, "owner");
    let mut store = |file: &str| {
        let plain = data(1000, 1);
        assert_received(
            &upload(&mut conn, id, &key, file, &plain, 512),
            id,
            file,
            &plain,
        );
    };
    store("a.bin");
    faults.size_gate.hold_next();
    let look = || admin.json("/api/v1/clients");
    std::thread::scope(|scope| {
        let first = scope.spawn(look);
        assert!(faults.size_gate.wait_arrived(Duration::from_secs(20)));
        store("b.bin");
        let (tx, rx) = std::sync::mpsc::channel();
        scope.spawn(move || tx.send(look()).unwrap());
        // Not answered while the first pass is held (a second pass beside it would
        // answer at once: its size queries are not held).
        assert!(rx.recv_timeout(Duration::from_millis(700)).is_err());
        faults.size_gate.open();
        assert_eq!(first.join().unwrap()["items"][0]["files"], 1);
        let second = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(second["items"][0]["files"], 2);
    });
    admin.stop();
}

/// A store that does not answer (a hung file store) makes `/readyz` answer 503 within
/// the probe's time-out (5 s), not never; while that probe still waits, requests get 503
/// at once and no other probe piles up on the store; once it answers, probes resume.
#[test]
fn a_probe_the_store_never_answers_fails_in_time_and_is_not_repeated() {
    let admin = FaultyAdmin::start();
    let faults = &admin.faults;
    faults.size_gate.hold_next();
    let before = admin.size_queries();
    let asked = std::time::Instant::now();
    let (status, body) = admin.get("/readyz");
    let waited = asked.elapsed();
    assert_eq!((status, body.as_str()), (503, "not ready: probe\n"));
    assert!(
        waited < Duration::from_secs(30),
        "answered after {waited:?}"
    );
    assert_eq!(admin.get("/readyz").0, 503);
    assert_eq!(
        admin.size_queries() - before,
        1,
        "no second probe while the first waits"
    );
    faults.size_gate.open();
    assert!(eventually(Duration::from_secs(10), || admin
        .get("/readyz")
        .0
        == 200));
    admin.stop();
}

#[test]
fn rate_limit_refusals_and_refused_connections_are_counted() {
    fn tweak(config: &mut ServerConfig) {
        with_admin(config);
        config.register_limit = sfc_server::RateLimit::new(1, 1);
        config.max_connections_per_address = 2;
    }
    let server = TestServer::start_with(tweak);
    let addr = server.server.as_ref().unwrap().admin_addr().unwrap();
    let token = std::fs::read_to_string(server.root().join("admin.token")).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let scrape = || {
        let body = agent
            .get(format!("http://{addr}/metrics"))
            .header("Authorization", format!("Bearer {}", token.trim()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
    };
    let mut conn = server.connect();
    assert!(matches!(
        conn.call(&register_request("lou")),
        Response::Registered { .. }
    ));
    assert_eq!(conn.call(&register_request("max")), Response::ServerError);
    let _second = server.connect();
    let mut third = server.connect();
    assert!(third.closed_within(Duration::from_secs(5)));
    let scraped = scrape();
    assert_eq!(
        sample(
            &scraped,
            "sfc_rate_limit_refusals_total",
            Some(("limit", "registration"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scraped,
            "sfc_connections_refused_total",
            Some(("reason", "per-address"))
        ),
        1.0
    );
    assert_eq!(sample(&scraped, "sfc_connections_open", None), 2.0);
}

#[test]
fn long_client_lists_paginate_on_the_pages() {
    let admin = Admin::start();
    let mut conn = admin.server.connect();
    for i in 0..sfc_server::admin::DEFAULT_PAGE + 3 {
        let reply = conn.call(&register_request(&format!("user{i:03}")));
        assert!(matches!(reply, Response::Registered { .. }), "{reply:?}");
    }
    let cookie = admin.login();
    let (status, first) = admin.page(&cookie, "/clients");
    assert_eq!(status, 200);
    assert!(first.contains("Page 1 of 2") && first.contains("?page=1"));
    assert!(first.contains("user000") && first.contains("user049"));
    assert!(!first.contains("user050"));
    let (_, second) = admin.page(&cookie, "/clients?page=1");
    assert!(second.contains("Page 2 of 2") && second.contains("?page=0"));
    assert!(second.contains("user050") && second.contains("user052"));
    assert!(!second.contains("user049"));
    // Names are escaped in the markup.
    let reply = conn.call(&register_request("<b>bold</b>"));
    assert!(matches!(reply, Response::Registered { .. }), "{reply:?}");
    let (_, first) = admin.page(&cookie, "/clients");
    assert!(first.contains("&#60;b&#62;bold&#60;/b&#62;"));
    assert!(!first.contains("<b>bold"));
}

/// Undoes the templates' HTML escaping (askama writes numeric references).
fn unescape(html: &str) -> String {
    [
        ("&#60;", "<"),
        ("&#62;", ">"),
        ("&#34;", "\""),
        ("&#39;", "'"),
        ("&#38;", "&"),
    ]
    .iter()
    .fold(html.to_owned(), |text, (entity, plain)| {
        text.replace(entity, plain)
    })
}

/// The text between `before` and the next `"` (an attribute's value).
fn attribute<'a>(page: &'a str, before: &str) -> &'a str {
    let start = page.find(before).unwrap() + before.len();
    let len = page[start..].find('"').unwrap();
    &page[start..start + len]
}

#[test]
fn names_and_labels_are_escaped_on_the_pages_and_their_forms_still_work() {
    let admin = Admin::start();
    let name = "<script>alert(\"x&'y\")</script>";
    let label = "<i>\"a&b'</i> c.txt";
    let (mut conn, id, key) = enrolled(&admin, name);
    store_file(&mut conn, id, &key, label, b"hostile label");
    let cookie = admin.login();
    let escaped_name = "&#60;script&#62;alert(&#34;x&#38;&#39;y&#34;)&#60;/script&#62;";
    let (status, clients) = admin.page(&cookie, "/clients");
    assert_eq!(status, 200);
    assert!(
        clients.contains(&format!(">{escaped_name}</a>")),
        "{clients}"
    );
    assert!(!clients.contains("<script>alert"));
    let (status, page) = admin.page(&cookie, &format!("/clients/{id}"));
    assert_eq!(status, 200);
    assert!(
        !page.contains("<script>alert") && !page.contains("<i>"),
        "{page}"
    );
    assert!(page.contains(&format!("<h1>Client {escaped_name}</h1>")));
    assert!(page.contains(&format!("data-confirm=\"Remove {escaped_name} and all")));
    let escaped_label = "&#60;i&#62;&#34;a&#38;b&#39;&#60;/i&#62; c.txt";
    assert!(page.contains(&format!("<td data-label=\"Label\">{escaped_label}</td>")));
    assert!(page.contains(&format!("data-confirm=\"Delete {escaped_label}?\"")));
    // What a browser reads back from the markup is the label itself: the download link
    // and the delete form reach the file.
    let href = unescape(attribute(&page, "<a class=\"button\" href=\""));
    let mut response = admin
        .agent
        .get(admin.url(&href))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{href}");
    assert_eq!(response.body_mut().read_to_vec().unwrap(), b"hostile label");
    let field = unescape(attribute(
        &page,
        "<input type=\"hidden\" name=\"name\" value=\"",
    ));
    assert_eq!(field, label);
    let csrf = csrf_of(&page);
    let response = admin
        .agent
        .post(admin.url(&format!("/clients/{id}/delete")))
        .header("Cookie", &cookie)
        .send_form([("name", field.as_str()), ("csrf", csrf.as_str())])
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert!(admin.server.db().file(&id, label).unwrap().is_none());
}

/// Whether the server closed `stream` (EOF or reset) before `limit`, reading (and
/// discarding) whatever it sent first. A read time-out means it is still open.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// `GET /healthz` on an open connection: the status line.
fn healthz_on(stream: &mut std::net::TcpStream, keep_alive: bool) -> String {
    use std::io::{Read, Write};
    let connection = if keep_alive { "keep-alive" } else { "close" };
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The whole (small) response: up to the body "ok\n".
    while !response.ends_with(b"ok\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// A client that sends half a request line and stops, or stays silent after a response
/// on a kept-alive connection, is closed at the request-head time-out (20 s); one that
/// announces a body and never sends it, at the body time-out (30 s). The test allows
/// 40 s each, instead of connections held for ever.
#[test]
fn a_stalled_request_head_and_an_idle_keep_alive_are_closed() {
    use std::io::Write;
    let admin = Admin::start();
    let addr = admin.server.server.as_ref().unwrap().admin_addr().unwrap();
    let mut no_body = std::net::TcpStream::connect(addr).unwrap();
    no_body
        .write_all(
            b"POST /login HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 80\r\n\r\n",
        )
        .unwrap();
    let mut partial = std::net::TcpStream::connect(addr).unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(healthz_on(&mut idle, true), "HTTP/1.1 200 OK");
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let limit = Duration::from_secs(40);
    assert!(
        closed_within(&mut partial, limit),
        "partial head still open"
    );
    assert!(
        closed_within(&mut idle, limit),
        "idle keep-alive still open"
    );
    assert!(
        closed_within(&mut silent, limit),
        "silent connection still open"
    );
    assert!(
        closed_within(&mut no_body, limit),
        "missing body still awaited"
    );
    // The listener still serves.
    let (status, _) = admin.get("/healthz");
    assert_eq!(status, 200);
}

/// Admin connections are capped, per address (32) and overall (256): a connection beyond
/// the address's cap is closed at once; one beyond the overall cap closes the connection
/// idle longest instead; those already open are still served. The other
/// "addresses" are other loopback addresses (127.0.0.x).
#[test]
fn admin_connections_beyond_the_caps_are_closed_at_once() {
    sfc_server::raise_fd_limit(1024);
    let admin = Admin::start();
    let addr = admin.server.server.as_ref().unwrap().admin_addr().unwrap();
    let from = |n: u8| tcp_from([127, 0, 0, n].into(), addr).unwrap();
    let quick = Duration::from_secs(5);
    let mut open: Vec<std::net::TcpStream> = (0..32).map(|_| from(2)).collect();
    let mut extra = from(2);
    assert!(
        closed_within(&mut extra, quick),
        "33rd from one address served"
    );
    // Another address is not affected, up to the overall cap.
    for n in 3..=9 {
        open.extend((0..32).map(|_| from(n)));
    }
    assert_eq!(open.len(), 256);
    // A newcomer refused for its own address's cap closes nobody's connection to make
    // room: the one idle longest is still served (and no longer idle longest).
    let mut extra = from(2);
    assert!(
        closed_within(&mut extra, quick),
        "33rd from one address served"
    );
    assert_eq!(healthz_on(&mut open[0], true), "HTTP/1.1 200 OK");
    // The listener is full of connections that sent nothing (idle, as keep-alive ones
    // between requests): a newcomer (who may be the operator) is served, and the one
    // idle longest is closed to make room; before, the newcomer was refused for as long
    // as the others stayed.
    let mut beyond = from(10);
    assert_eq!(healthz_on(&mut beyond, true), "HTTP/1.1 200 OK");
    let mut oldest = open.remove(1);
    assert!(
        closed_within(&mut oldest, quick),
        "the longest idle stays open"
    );
    drop((beyond, oldest));
    // The earlier connections are served (the newest first: the first ones were opened
    // longest ago), and a closed one frees a place.
    let mut last = open.pop().unwrap();
    assert_eq!(healthz_on(&mut last, false), "HTTP/1.1 200 OK");
    let mut first = open.swap_remove(0);
    assert_eq!(healthz_on(&mut first, false), "HTTP/1.1 200 OK");
    drop((last, first));
    let mut again = from(10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The server sees the two closes shortly after the client does.
    while closed_within(&mut again, Duration::from_millis(200)) {
        assert!(std::time::Instant::now() < deadline, "no place freed");
        again = from(10);
    }
    assert_eq!(healthz_on(&mut again, false), "HTTP/1.1 200 OK");
}

/// Fills the admin listener: 32 connections from each of 8 addresses (the caps), each
/// sending `request` and then nothing more; a second later, a newcomer from another
/// address asks for `/healthz`: it must be served. The server and the 256 connections,
/// for more checks.
fn a_newcomer_gets_in_when_every_place_has_sent(
    request: &str,
) -> (Admin, Vec<std::net::TcpStream>) {
    use std::io::Write;
    sfc_server::raise_fd_limit(1024);
    let admin = Admin::start();
    let addr = admin.server.server.as_ref().unwrap().admin_addr().unwrap();
    let mut open = Vec::new();
    for n in 2..=9 {
        for _ in 0..32 {
            let mut holder = tcp_from([127, 0, 0, n].into(), addr).unwrap();
            holder.write_all(request.as_bytes()).unwrap();
            open.push(holder);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut operator = tcp_from([127, 0, 0, 10].into(), addr).unwrap();
    assert_eq!(healthz_on(&mut operator, false), "HTTP/1.1 200 OK");
    (admin, open)
}

/// Connections kept busy with wrong tokens from blocked addresses (each verdict waits
/// 2 s) do not keep the operator out of a full listener: a request waiting out that
/// delay counts as idle, so the newcomer's connection closes one of them.
#[test]
fn connections_busy_with_blocked_guesses_make_room_for_a_newcomer() {
    // Pipelined: a wrong token after another, each answered after the delay once the
    // address is blocked.
    let guesses = "GET /api/v1/stats HTTP/1.1\r\nHost: localhost\r\n\
                   Authorization: Bearer guess\r\n\r\n"
        .repeat(2 * LOGIN_FAILURES_PER_MINUTE as usize + 10);
    drop(a_newcomer_gets_in_when_every_place_has_sent(&guesses));
}

/// Connections whose request announced a body and sent none (held until the body
/// time-out, 30 s) do not keep a newcomer out of a full listener either.
#[test]
fn connections_waiting_for_a_body_make_room_for_a_newcomer() {
    use std::io::Read;
    let (_admin, open) = a_newcomer_gets_in_when_every_place_has_sent(
        "POST /login HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n",
    );
    // The one that made room is closed at once, not when its body time-out (30 s) comes:
    // the cap holds however many newcomers arrive.
    for stream in &open {
        stream.set_nonblocking(true).unwrap();
    }
    let closed = |open: &[std::net::TcpStream]| {
        open.iter()
            .filter(|stream| match (&**stream).read(&mut [0u8; 256]) {
                Ok(_) => true,
                Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || closed(&open) == 1),
        "{} closed",
        closed(&open)
    );
}

/// A download whose client stops taking it is cut at `--admin-send-timeout`/// A download whose client stops taking it is cut at `--admin-send-timeout` (2 s here):
/// its connection is closed before the whole file has gone, instead of being held (with
/// its place under the caps and its reader) for as long as the client likes. A client
/// that reads slowly, pausing for less than the limit each time, gets the whole file.
#[test]
fn a_download_the_client_stops_reading_is_cut_at_the_send_timeout() {
    use std::io::{Read, Write};
    fn with_quick_send_timeout(config: &mut ServerConfig) {
        with_admin(config);
        config.admin.as_mut().unwrap().send_timeout = Duration::from_secs(2);
    }
    let admin = Admin::start_with(with_quick_send_timeout);
    let addr = admin.server.server.as_ref().unwrap().admin_addr().unwrap();
    let (mut conn, id, key) = enrolled(&admin, "alice");
    // Far more than the socket buffers of both ends on loopback hold (a few MiB each).
    let plain = data(24 << 20, 7);
    let reply = upload(&mut conn, id, &key, "big.bin", &plain, 1 << 20);
    assert_received(&reply, id, "big.bin", &plain);
    assert_eq!(
        conn.call(&file_name_request(id, 900, "big.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    let request = format!(
        "GET /api/v1/clients/{id}/file?name=big.bin HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {}\r\nConnection: close\r\n\r\n",
        admin.bearer()
    );
    let ask = || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    };
    // What arrives until the server closes (EOF or a reset); a read time-out fails.
    let read_to_close = |stream: &mut std::net::TcpStream, received: &mut Vec<u8>| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(error) => panic!("after {} bytes: {error}", received.len()),
            }
        }
    };

    let mut stalled = ask();
    std::thread::sleep(Duration::from_secs(6));
    let mut received = Vec::new();
    read_to_close(&mut stalled, &mut received);
    let head = String::from_utf8_lossy(&received[..received.len().min(16)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        received.len() < plain.len(),
        "the whole file ({} bytes) went to a client that stopped reading",
        received.len()
    );

    // Each pause is shorter than the limit, and each read takes enough (4 MiB) for the
    // kernel to report the server's socket writable again (a third of its send buffer
    // free); the whole takes longer than the limit.
    let mut slow = ask();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1000));
        slow.read_exact(&mut buf).unwrap();
        received.extend_from_slice(&buf);
    }
    read_to_close(&mut slow, &mut received);
    let body_at = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        received[body_at..] == plain[..],
        "the slow client's copy differs"
    );
}

/// The overview (stats, the client list) asks the file store for every file's size, an
/// S3 HEAD each: it is computed once and reused while nothing changes, however often and
/// from however many tabs the dashboard asks; a client's upload shows once the result is
/// 2 s old, an admin delete at once; a client's file list sizes only the page shown.
#[test]
fn the_overview_is_computed_once_while_nothing_changes() {
    let admin = FaultyAdmin::start();
    let server = &admin.server;
    let get = |path: &str| admin.json(path);
    let queries = || admin.size_queries();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "owner");
    let mut store = |n: u32| {
        let plain = data(1000 + n as usize, n);
        let file = format!("f{n}.bin");
        assert_received(
            &upload(&mut conn, id, &key, &file, &plain, 512),
            id,
            &file,
            &plain,
        );
    };
    for n in 0..3 {
        store(n);
    }

    let before = queries();
    for _ in 0..5 {
        assert_eq!(get("/api/v1/stats")["files"], 3);
    }
    assert_eq!(queries() - before, 3, "one pass for five looks");
    // Many tabs at once: still one pass after a change (a client's: shown once the last
    // result is older than 2 s).
    store(3);
    std::thread::sleep(Duration::from_millis(2100));
    let before = queries();
    std::thread::scope(|scope| {
        let looks: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| get("/api/v1/stats")))
            .collect();
        for look in looks {
            assert_eq!(look.join().unwrap()["files"], 4, "the change shows at once");
        }
    });
    assert_eq!(queries() - before, 4, "one pass for eight looks at once");
    assert_eq!(get("/api/v1/clients")["items"][0]["files"], 4);
    assert_eq!(queries() - before, 4, "the client list shares it");
    // One page of a client's files: only its files are sized.
    let before = queries();
    let page = get(&format!(
        "/api/v1/clients/{}/files?limit=1&offset=2",
        id.to_hex()
    ));
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["file_name"], "f2.bin");
    assert!(page["items"][0]["size"].as_u64().unwrap() > 0);
    assert_eq!(queries() - before, 1);
    // The names of the uploads in progress come from the overview as the dashboard polls
    // it: on a server whose rows keep changing, each poll of the uploads does not start
    // a pass of its own.
    let mut paused = Conn::connect(server.addr());
    let (other, other_key) = enroll(&mut paused, "other");
    let cipher = encrypt(&other_key, &data(3000, 9));
    let parked = packets(other, "p.bin", 3000, &cipher, 1024, ContentSize::Whole);
    paused.send_raw(&parked[0]);
    assert!(eventually(Duration::from_secs(10), || {
        get("/api/v1/uploads").as_array().unwrap().len() == 1
    }));
    // A pass that knows the new client (the last one is older than 2 s by now) …
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get("/api/v1/stats")["clients"], 2);
    // … then a change, and polls within 2 s.
    store(4);
    let before = queries();
    for _ in 0..3 {
        assert_eq!(get("/api/v1/uploads")[0]["client_name"], "other");
    }
    assert_eq!(queries() - before, 0, "no pass for the uploads' names");
    drop(paused);
    // A delete through the admin listener shows at once.
    let path = format!("/api/v1/clients/{}/file?name=f0.bin", id.to_hex());
    assert_eq!(admin.call("DELETE", &path).0, 200);
    assert_eq!(get("/api/v1/stats")["files"], 4);
    drop(conn);
    admin.stop();
}

/// Sends `request` (whose head must ask `Connection: close`) on a new connection to the
/// admin listener; the whole response.
fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn with_admin_host(config: &mut ServerConfig) {
    with_admin(config);
    if let Some(admin) = config.admin.as_mut() {
        admin.hosts = vec!["Admin.Example.org".into()];
    }
}

/// DNS rebinding: a web page whose name resolves to the listener's address makes the
/// operator's browser send its own name as `Host`. Such requests are refused before any
/// route, the unauthenticated ones too (421, saying what to do, with the headers every
/// response gets), and a correct token at `/login` opens no session; the listener's IP
/// address, `localhost`, an `--admin-host` name and a request without `Host` are served.
#[test]
fn requests_naming_another_host_are_refused_before_any_route() {
    let admin = Admin::start_with(with_admin_host);
    let addr = admin.server.server.as_ref().unwrap().admin_addr().unwrap();
    let port = addr.port();
    for path in [
        "/healthz",
        "/readyz",
        "/login",
        "/api/v1/stats",
        "/static/admin.js",
    ] {
        let response = raw_exchange(
            addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: rebound.example:{port}\r\n\
                 Authorization: {}\r\nConnection: close\r\n\r\n",
                admin.bearer()
            ),
        );
        assert!(response.starts_with("HTTP/1.1 421"), "{path}: {response}");
        assert!(
            response.contains("--admin-host rebound.example\n"),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("x-frame-options: deny"),
            "{response}"
        );
    }
    // Two Host headers (a forged request), or an absolute-form target naming another
    // host, are refused too.
    for head in [
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: rebound.example\r\n".to_owned(),
        format!("GET http://rebound.example:{port}/healthz HTTP/1.1\r\nHost: localhost\r\n"),
    ] {
        let response = raw_exchange(addr, &format!("{head}Connection: close\r\n\r\n"));
        assert!(response.starts_with("HTTP/1.1 421"), "{head:?}: {response}");
    }
    let body = format!("token={}", admin.token);
    let login = raw_exchange(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: rebound.example\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(login.starts_with("HTTP/1.1 421"), "{login}");
    assert!(
        !login.to_ascii_lowercase().contains("set-cookie"),
        "{login}"
    );

    for host in [
        format!("Host: 127.0.0.1:{port}\r\n"),
        "Host: localhost\r\n".to_owned(),
        format!("Host: admin.example.ORG:{port}\r\n"),
        String::new(),
    ] {
        let version = if host.is_empty() { "1.0" } else { "1.1" };
        let response = raw_exchange(
            addr,
            &format!("GET /healthz HTTP/{version}\r\n{host}Connection: close\r\n\r\n"),
        );
        assert!(
            response.starts_with(&format!("HTTP/{version} 200"))
                || response.starts_with("HTTP/1.1 200"),
            "{host:?}: {response}"
        );
    }
    // Refusals are counted as responses like any other.
    let (status, metrics) = admin.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sfc_admin_requests_total{status=\"421\"} 8"),
        "{metrics}"
    );
}

/// The throttled log lines (here: requests for another host) say how many events they
/// held back: the first of a burst is logged at once, the rest of it in one line once
/// the interval (10 s) has passed, though nothing follows the burst; and at shutdown
/// whatever is still held back.
#[test]
fn the_end_of_a_burst_of_refusals_is_logged_with_its_count() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, admin) = admin_process(dir.path(), &[]);
    let refused = |count: usize| {
        for _ in 0..count {
            let answer = raw_exchange(
                admin,
                "GET /healthz HTTP/1.1\r\nHost: rebound.example\r\nConnection: close\r\n\r\n",
            );
            assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
        }
    };
    refused(4);
    let first = server
        .wait_for("requests for a host this listener does not answer to refused")
        .expect("the first refusal is logged at once");
    assert!(first.contains("refused=1"), "{first}");
    // The other three: one line within two intervals, with nothing after them.
    let rest = server
        .wait_for("3 more requests for hosts this listener does not answer to")
        .or_else(|| server.wait_for("3 more requests for hosts this listener does not answer to"));
    assert!(rest.is_some(), "the end of the burst was never logged");
    // Within the interval after that line, refusals are held back; at shutdown they are
    // logged as the listener stops.
    refused(5);
    assert!(server.terminate().success());
    let at_exit = server.lines_containing("5 more requests for hosts", Duration::from_secs(1));
    assert_eq!(at_exit.len(), 1, "{at_exit:#?}");
}

/// The server binary on `dir` with an admin listener on a free port of 127.0.0.1 (and
/// `extra` options), and that listener's address.
fn admin_process(
    dir: &std::path::Path,
    extra: &[&str],
) -> (common::process::ServerProcess, SocketAddr) {
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut server = common::process::ServerProcess::start_local(dir.to_str().unwrap(), &args);
    let admin = server
        .wait_for("admin listener on ")
        .expect("the admin listener starts")
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .expect("the admin address");
    (server, admin)
}

/// Connections the admin listener closes before serving them are logged as the protocol
/// listener's refusals are: one line per kind and interval, the rest counted (here: at
/// shutdown). A peer connecting in a loop used to write a line per connection.
#[test]
fn connections_refused_by_the_admin_listener_do_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, admin) = admin_process(dir.path(), &[]);
    // Every place one address may hold, held (waiting to send a request).
    let held: Vec<std::net::TcpStream> = (0..sfc_server::admin::MAX_CONNECTIONS_PER_ADDRESS)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    let refused = 40;
    for _ in 0..refused {
        let mut extra = std::net::TcpStream::connect(admin).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Closed unread: the end of the stream (or a reset), never an answer.
        let mut byte = [0u8; 1];
        let got = std::io::Read::read(&mut extra, &mut byte);
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    }
    let needle = "too many connections from one address";
    drop(held);
    let first = one_line_then_the_count_at_exit(
        &mut server,
        needle,
        &format!(
            "{} more connections closed since the last line ({needle})",
            refused - 1
        ),
    );
    assert!(first.contains("refused=1"), "{first}");
}

/// The same for failed TLS handshakes: a peer that sends a byte of garbage to a TLS
/// admin listener on each connection gets one line per interval, not one per connection.
#[test]
fn failed_admin_tls_handshakes_do_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = dir.path().join("admin.crt");
    let key_file = dir.path().join("admin.key");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let (mut server, admin) = admin_process(
        &data,
        &[
            "--admin-tls-cert",
            cert_file.to_str().unwrap(),
            "--admin-tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let failed = 20;
    for _ in 0..failed {
        let mut peer = std::net::TcpStream::connect(admin).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut peer, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Closed by the server (after its alert, if any): the handshake has failed.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut peer, &mut rest);
    }
    one_line_then_the_count_at_exit(
        &mut server,
        "TLS handshake failed; connection closed",
        &format!(
            "{} more connections closed since the last line (TLS handshake failed)",
            failed - 1
        ),
    );
}

/// Failed logins are logged one line per interval from any address, with the number
/// since the last line (a guesser with many addresses wrote five lines a minute from
/// each); every one is still counted and listed.
#[test]
fn failed_logins_do_not_flood_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, admin) = admin_process(dir.path(), &[]);
    let wrong = format!(
        "GET /api/v1/stats HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer wrong\r\n\
         Connection: close\r\n\r\n"
    );
    for _ in 0..3 {
        let answer = raw_exchange(admin, &wrong);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    let first =
        one_line_then_the_count_at_exit(&mut server, "admin: failed login", "2 more failed logins");
    assert!(first.contains("failed=1"), "{first}");
}

/// `/logout` reads its form only once it knows the request has a session: a stranger
/// that announces a body and sends none is answered at once (the redirect to the login
/// form), not after the body's time-out.
#[test]
fn logout_reads_no_form_before_the_session_is_known() {
    use std::io::{Read, Write};
    let admin = Admin::start();
    let addr: SocketAddr = admin
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    // Well within the 30 s a body may take to arrive.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "POST /logout HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .expect("answered without the body");
    assert_eq!(&head, b"HTTP/1.1 303");
}

/// After a burst of events: one line with `first` logged (returned), and at exit one
/// line with `rest`, the others of the burst counted.
fn one_line_then_the_count_at_exit(
    server: &mut common::process::ServerProcess,
    first: &str,
    rest: &str,
) -> String {
    let lines = server.lines_containing(first, Duration::from_millis(500));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(server.terminate().success());
    let at_exit = server.lines_containing(rest, Duration::from_secs(1));
    assert_eq!(
        at_exit.len(),
        1,
        "{:#?}",
        server.lines_containing("", Duration::ZERO)
    );
    lines[0].clone()
}
