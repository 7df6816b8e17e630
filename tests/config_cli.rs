//! The `tokengate` command line: check-config, --version, overrides, healthcheck.

mod common;

use std::process::Command;

use common::*;

fn tokengate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    command.env_remove("RUST_LOG").env("TEST_CLIENT_SECRET", CLIENT_SECRET);
    command
}

fn write_config(dir: &tempfile::TempDir, config: &ProxyToml) -> std::path::PathBuf {
    let path = dir.path().join("proxy.toml");
    config.write(&path);
    path
}

fn check_config(path: &std::path::Path) -> std::process::Output {
    tokengate().arg("check-config").arg("--config").arg(path).output().expect("tokengate check-config runs")
}

#[test]
fn check_config_prints_every_problem_with_its_key_and_fails() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broken = ProxyToml::empty()
        .set("server", "listen", "not an address")
        .set("server", "surprise", true)
        .set("oauth", "client_secret_env", "UNSET_FOR_THIS_TEST")
        .set("oauth", "refresh_ahead", "whenever")
        .set("session", "same_site", "diagonal")
        .route_with([("prefix", "/oauth20/")]);
    let path = write_config(&dir, &broken);
    // One run names the unknown key and every bad value together.
    let value_errors = [
        "server.listen",
        "oauth.client_id",
        "oauth.client_secret_env",
        "oauth.refresh_ahead",
        "session.same_site",
        "route[0].prefix",
    ];
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in value_errors.iter().chain(&["server.surprise"]) {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }

    // Fixing one problem leaves exactly the others.
    let path = write_config(&dir, &broken.remove("server", "surprise"));
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("server.surprise"), "{stderr}");
    for key in value_errors {
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
        .expect("tokengate check-config runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write_config(&dir, &ProxyToml::for_upstream("http://127.0.0.1:9"));
    let bad = tokengate()
        .env("TOKENGATE_SESSION_MAX_SESSIONS", "many")
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("tokengate check-config runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TOKENGATE_SESSION_MAX_SESSIONS"));
    let good = tokengate()
        .env("TOKENGATE_SESSION_SAME_SITE", "strict")
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("tokengate check-config runs");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
}

#[test]
fn version_is_printed() {
    let output = tokengate().arg("--version").output().expect("tokengate --version runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn a_secret_never_appears_in_check_config_output() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = ProxyToml::empty()
        .set("oauth", "client_id", "k")
        .set("oauth", "client_secret_env", "TEST_CLIENT_SECRET")
        .set("session", "same_site", "x");
    let output = check_config(&write_config(&dir, &config));
    assert!(!output.status.success(), "the config has a bad value");
    let all =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!all.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn healthcheck_reports_a_running_proxy_and_fails_without_one() {
    let env = Env::start().await;
    let admin = env.proxy.admin.expect("the harness config has an admin listener");
    let path = write_config(&env.dir, &env.config().clone().set("server", "admin_listen", admin.to_string()));
    let healthcheck = || {
        tokengate()
            .arg("healthcheck")
            .arg("--config")
            .arg(&path)
            .status()
            .expect("tokengate healthcheck runs")
    };
    assert!(healthcheck().success());
    drop(env);
    let dead = healthcheck();
    assert!(!dead.success());
}

#[test]
fn check_config_warns_about_insecure_settings_and_a_readable_secret_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-from-file\n").expect("the secret file is writable");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let config = ProxyToml::empty()
        .set("server", "public_origin", "https://shop.example.com")
        .set("oauth", "client_id", "k")
        .set("oauth", "client_secret_file", secret.display().to_string())
        .set("session", "cookie_name", "tg")
        .set("session", "cookie_secure", false);
    let path = write_config(&dir, &config);
    let output = check_config(&path);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("warning: session.cookie_secure"), "{stderr}");
    assert!(stderr.contains("warning: oauth.client_secret_file"), "{stderr}");
    assert!(!stderr.contains("s3cret-from-file"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let output = check_config(&path);
    assert!(!String::from_utf8_lossy(&output.stderr).contains("client_secret_file"));
}
