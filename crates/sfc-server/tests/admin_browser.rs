//! The admin pages in headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver (plain JSON over HTTP, with the ureq client the API tests use):
//! log in, see a client that the real `sfc-client` registered, watch an upload appear
//! and finish on the dashboard (its live refresh), download a file and compare its
//! bytes, delete a file, remove a client, and check the pages at 360 px. With
//! `SFC_SCREENSHOT=1` it saves the dashboard's screenshot as `docs/admin-dashboard.png`
//! (the one the README shows).
//!
//! Without Chromium the test says how to get it and returns, except in CI (`CI` set),
//! where `.ci/run` installs it and a missing browser fails the test.
#![cfg(test)]

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use sfc_proto::ClientId;
use sfc_server::AdminConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Self> {
        if !(Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: {CHROMIUM} or {CHROMEDRIVER} is missing (.ci/run installs chromium and chromium-driver)"
            );
            eprintln!(
                "skipped: the browser tests need Chromium: apt-get install -y chromium chromium-driver"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            agent,
            _profile: tempfile::tempdir().unwrap(),
        };
        assert!(
            eventually(Duration::from_secs(20), || browser
                .agent
                .get(format!("{}/status", browser.base))
                .call()
                .is_ok_and(|r| r.status() == 200)),
            "chromedriver did not start"
        );
        let profile = browser._profile.path().display().to_string();
        let created = browser.post(
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--window-size=1100,820",
                        format!("--user-data-dir={profile}"),
                    ]
                }
            }}}),
        );
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        }
        .unwrap();
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call("POST", path, Some(body))
    }

    fn in_session(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.post(&self.in_session("/url"), json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let found = self.post(
            &self.in_session("/element"),
            json!({"using": "css selector", "value": css}),
        );
        match found["element-6066-11e4-a52e-4f735466cecf"].as_str() {
            Some(id) => id.to_owned(),
            None => panic!("{css}: {found}"),
        }
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.post(
            &self.in_session(&format!("/element/{element}/click")),
            json!({}),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.post(
            &self.in_session(&format!("/element/{element}/value")),
            json!({ "text": text }),
        );
    }

    fn script(&self, script: &str) -> Value {
        self.post(
            &self.in_session("/execute/sync"),
            json!({"script": script, "args": []}),
        )
    }

    fn text(&self, css: &str) -> String {
        let css = serde_json::to_string(css).unwrap();
        self.script(&format!(
            "var e = document.querySelector({css}); return e ? e.textContent : '';"
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    fn accept_alert(&self) {
        assert!(eventually(Duration::from_secs(15), || {
            let url = format!("{}{}", self.base, self.in_session("/alert/accept"));
            self.agent
                .post(&url)
                .send_json(json!({}))
                .is_ok_and(|r| r.status() == 200)
        }));
    }

    fn url(&self) -> String {
        self.call("GET", &self.in_session("/url"), None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn screenshot(&self) -> Vec<u8> {
        let data = self.call("GET", &self.in_session("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap()
    }

    fn resize(&self, width: u32, height: u32) {
        self.post(
            &self.in_session("/window/rect"),
            json!({"width": width, "height": height}),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The real `sfc-client`, built beside this test's `sfc-server` (`cargo test
/// --workspace` builds it; or `cargo build -p sfc-client`).
fn client_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_sfc-server"));
    let client = server.with_file_name("sfc-client");
    assert!(
        client.exists(),
        "{} is missing: cargo build -p sfc-client",
        client.display()
    );
    client
}

fn docs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

#[test]
fn an_operator_logs_in_watches_an_upload_downloads_deletes_and_removes() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let server = TestServer::start_with(|config| {
        config.admin = Some(AdminConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            config.data_dir.join("admin.token"),
        ));
    });
    let admin = format!(
        "http://{}",
        server.server.as_ref().unwrap().admin_addr().unwrap()
    );
    let token = std::fs::read_to_string(server.root().join("admin.token")).unwrap();

    // A real sfc-client registers "ivy" and uploads a file.
    let client_dir = tempfile::tempdir().unwrap();
    let plain = data(150_000, 11);
    std::fs::write(client_dir.path().join("photo.jpg"), &plain).unwrap();
    let output = Command::new(client_binary())
        .current_dir(client_dir.path())
        .args([
            "--server",
            &server.addr.to_string(),
            "--name",
            "ivy",
            "--timeout",
            "20",
        ])
        .arg("photo.jpg")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sfc-client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let me = std::fs::read_to_string(client_dir.path().join("me.info")).unwrap();
    let ivy = ClientId::from_hex(me.lines().nth(1).unwrap().trim()).unwrap();

    // Log in.
    browser.go(&format!("{admin}/"));
    assert!(browser.url().ends_with("/login"));
    browser.type_into("#token", "wrong");
    browser.click("button[type=submit]");
    // A click returns before the form's navigation has finished: wait for the page.
    assert!(eventually(Duration::from_secs(15), || browser
        .text("p.error")
        .contains("Wrong token")));
    browser.type_into("#token", token.trim());
    browser.click("button[type=submit]");
    assert!(
        eventually(Duration::from_secs(15), || browser.url()
            == format!("{admin}/")
            && browser.text("h1") == "Dashboard"),
        "{}",
        browser.url()
    );
    assert_eq!(browser.text("[data-stat=clients]"), "1");

    // The client list shows ivy.
    browser.go(&format!("{admin}/clients"));
    let clients = browser.text("#clients");
    assert!(
        clients.contains("ivy") && clients.contains(&ivy.to_hex()),
        "{clients}"
    );

    // An upload in progress appears on the dashboard without a reload, then finishes.
    browser.go(&format!("{admin}/"));
    let mut conn = server.connect();
    let (jack, key) = enroll(&mut conn, "jack");
    let slow = data(60_000, 5);
    let cipher = encrypt(&key, &slow);
    let parts = packets(
        jack,
        "video.mp4",
        slow.len(),
        &cipher,
        4096,
        ContentSize::Whole,
    );
    for part in &parts[..4] {
        conn.send_raw(part);
    }
    assert!(
        eventually(Duration::from_secs(15), || browser
            .text("#uploads")
            .contains("video.mp4")),
        "{}",
        browser.text("#uploads")
    );
    assert!(browser
        .text("#uploads")
        .contains(&format!("4 / {}", parts.len())));
    assert!(browser.text("#uploads").contains("jack"));
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"));
    // SFC_SCREENSHOT=1 refreshes the committed screenshot; otherwise it stays untouched.
    if std::env::var_os("SFC_SCREENSHOT").is_some() {
        std::fs::write(docs_dir().join("admin-dashboard.png"), &png).unwrap();
    }
    for part in &parts[4..] {
        conn.send_raw(part);
    }
    assert_received(&conn.recv(), jack, "video.mp4", &slow);
    assert!(eventually(Duration::from_secs(15), || browser
        .text("#uploads")
        .contains("No upload in progress")));

    // The client table sorts by a column when its header is clicked, both ways.
    browser.go(&format!("{admin}/clients"));
    let names = || {
        browser.script(
            "return Array.from(document.querySelectorAll('#clients tbody tr'))\
             .map(function (r) { return r.cells[0].textContent; });",
        )
    };
    // Bytes: ivy 150,000, jack 60,000.
    browser.click("#clients th:nth-child(5)");
    assert_eq!(names(), json!(["jack", "ivy"]), "bytes ascending");
    browser.click("#clients th:nth-child(5)");
    assert_eq!(names(), json!(["ivy", "jack"]), "bytes descending");
    browser.click("#clients th:nth-child(5)");
    browser.click("#clients th:nth-child(1)");
    assert_eq!(names(), json!(["ivy", "jack"]), "names ascending");
    browser.click("#clients th:nth-child(1)");
    assert_eq!(names(), json!(["jack", "ivy"]), "names descending");

    // Download ivy's file in the browser (its session cookie) and compare the bytes.
    browser.go(&format!("{admin}/clients/{ivy}"));
    assert!(browser.text("#files").contains("photo.jpg"));
    let fetched = browser.post(
        &browser.in_session("/execute/async"),
        json!({"script": "var done = arguments[arguments.length - 1];
            fetch(document.querySelector('a.button').href, {credentials: 'same-origin'})
              .then(function (r) { return r.arrayBuffer(); })
              .then(function (b) { done(Array.from(new Uint8Array(b))); });",
            "args": []}),
    );
    let bytes: Vec<u8> = fetched
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert!(bytes == plain, "downloaded {} bytes", bytes.len());

    // The pages fit a 360 px wide screen (no horizontal scrolling).
    browser.resize(360, 740);
    for page in ["/", "/clients", &format!("/clients/{ivy}")] {
        browser.go(&format!("{admin}{page}"));
        let width = browser.script("return document.documentElement.scrollWidth;");
        assert!(width.as_u64().unwrap() <= 360, "{page}: {width}");
    }
    browser.resize(1100, 820);

    // Delete the file (after the confirmation), then remove the client.
    browser.go(&format!("{admin}/clients/{ivy}"));
    browser.click("form[action$='/delete'] button");
    browser.accept_alert();
    assert!(eventually(Duration::from_secs(20), || browser
        .text("#files")
        .contains("No stored file")));
    assert!(server.db().file(&ivy, "photo.jpg").unwrap().is_none());
    browser.click("form[action$='/remove'] button");
    browser.accept_alert();
    assert!(eventually(Duration::from_secs(20), || browser
        .url()
        .ends_with("/clients")));
    assert!(eventually(Duration::from_secs(15), || {
        let clients = browser.text("#clients");
        clients.contains("jack") && !clients.contains("ivy")
    }));
    assert!(server.db().client(&ivy).unwrap().is_none());
    assert!(server.db().client(&jack).unwrap().is_some());
}
