//! The `tokengate` command line: check-config, --version, overrides, healthcheck.

mod common;

use std::process::Command;

use common::*;

fn tokengate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.env_remove("RUST_LOG").env("TEST_CLIENT_SECRET", CLIENT_SECRET);
    command
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn check_config_prints_every_problem_with_its_key_and_fails() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write_config(
        &dir,
        r#"
[server]
listen = "not an address"
surprise = true
[oauth]
client_secret_env = "UNSET_FOR_THIS_TEST"
refresh_ahead = "whenever"
[session]
same_site = "diagonal"
[[route]]
prefix = "/oauth20/"
"#,
    );
    // Type errors are reported first; fix that one to see the value errors.
    let output =
        tokengate().arg("check-config").arg("--config").arg(&path).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.surprise"), "{stderr}");

    let text = std::fs::read_to_string(&path).unwrap_or_default().replace("surprise = true\n", "");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let output =
        tokengate().arg("check-config").arg("--config").arg(&path).output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "server.listen",
        "oauth.client_id",
        "oauth.client_secret_env",
        "oauth.refresh_ahead",
        "session.same_site",
        "route[0].prefix",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn check_config_accepts_the_shipped_proxy_toml() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let output = tokengate()
        .env("TOKENGATE_CLIENT_SECRET", "x")
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write_config(&dir, &proxy_toml("http://127.0.0.1:9", &Options::default()));
    let bad = tokengate()
        .env("TOKENGATE_SESSION_MAX_SESSIONS", "many")
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TOKENGATE_SESSION_MAX_SESSIONS"));
    let good = tokengate()
        .env("TOKENGATE_SESSION_SAME_SITE", "strict")
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
}

#[test]
fn version_is_printed() {
    let output = tokengate().arg("--version").output().unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn a_secret_never_appears_in_check_config_output() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write_config(&dir, "[oauth]\nclient_id = \"k\"\nclient_secret_env = \"TEST_CLIENT_SECRET\"\n[session]\nsame_site = \"x\"\n");
    let output =
        tokengate().arg("check-config").arg("--config").arg(&path).output().unwrap_or_else(|e| panic!("{e}"));
    let all =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn healthcheck_reports_a_running_proxy_and_fails_without_one() {
    let env = Env::start().await;
    let admin = env.proxy.admin.unwrap_or_else(|| panic!("admin listener"));
    let path = write_config(
        &env.dir,
        &proxy_toml(&env.mock.url, &Options::default())
            .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"{admin}\"")),
    );
    let healthy =
        tokengate().arg("healthcheck").arg("--config").arg(&path).status().unwrap_or_else(|e| panic!("{e}"));
    assert!(healthy.success());
    drop(env);
    let dead =
        tokengate().arg("healthcheck").arg("--config").arg(&path).status().unwrap_or_else(|e| panic!("{e}"));
    assert!(!dead.success());
}

#[test]
fn check_config_warns_about_insecure_settings_and_a_readable_secret_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-from-file\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "[server]\npublic_origin = \"https://shop.example.com\"\n[oauth]\nclient_id = \"k\"\nclient_secret_file = \"{}\"\n\
         [session]\ncookie_name = \"tg\"\ncookie_secure = false\n",
        secret.display()
    );
    let path = write_config(&dir, &text);
    let output =
        tokengate().arg("check-config").arg("--config").arg(&path).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: session.cookie_secure"), "{stderr}");
    assert!(stderr.contains("warning: oauth.client_secret_file"), "{stderr}");
    assert!(!stderr.contains("s3cret-from-file"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    let output =
        tokengate().arg("check-config").arg("--config").arg(&path).output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("client_secret_file"));
}
