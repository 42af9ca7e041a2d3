//! NATS credentials for the tests, made as `nsc` and `nk` make them: NKey users, and a
//! decentralized set-up (an operator, an account with JetStream, users with JWTs signed by
//! the account) with the `.creds` files screamer reads and the server configuration that
//! trusts them.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;

use crate::nats::Access;

/// A fresh user NKey: its seed (the secret screamer reads) and public key (what the
/// server's configuration names).
pub fn nkey_user() -> (String, String) {
    let user = KeyPair::new_user();
    (
        user.seed().expect("a new key has a seed"),
        user.public_key(),
    )
}

/// Access to a server whose only users are these NKeys (`authorization { users }`).
pub fn nkey_access(dir: &Path, seed: &str, public_keys: &[&str]) -> anyhow::Result<Access> {
    let users: Vec<String> = public_keys
        .iter()
        .map(|k| format!("{{ nkey: \"{k}\" }}"))
        .collect();
    let config = dir.join("nkeys.conf");
    std::fs::write(
        &config,
        format!("authorization {{ users = [ {} ] }}\n", users.join(", ")),
    )?;
    Ok(Access {
        server_args: vec!["-c".into(), config.display().to_string()],
        client: async_nats::ConnectOptions::with_nkey(seed.to_owned()),
    })
}

/// An operator and one account with JetStream, as a server trusts them.
pub struct Operator {
    operator: KeyPair,
    account: KeyPair,
    dir: PathBuf,
}

impl Operator {
    pub fn new(dir: &Path) -> Self {
        Operator {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
            dir: dir.to_owned(),
        }
    }

    /// Access to a server in operator mode that knows the account (memory resolver), the
    /// harness connecting as a user of its own.
    pub fn access(&self) -> anyhow::Result<Access> {
        let operator_jwt = self.dir.join("operator.jwt");
        let claims = serde_json::json!({"type": "operator", "version": 2});
        std::fs::write(
            &operator_jwt,
            jwt(&self.operator, &self.operator.public_key(), "op", claims),
        )?;
        let account = jwt(
            &self.operator,
            &self.account.public_key(),
            "CDC",
            serde_json::json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2
            }),
        );
        // JetStream needs a system account.
        let system = KeyPair::new_account();
        let system_jwt = jwt(
            &self.operator,
            &system.public_key(),
            "SYS",
            serde_json::json!({"type": "account", "version": 2}),
        );
        let config = self.dir.join("operator.conf");
        std::fs::write(
            &config,
            format!(
                "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {sys}: \"{system_jwt}\"\n  {}: \"{account}\"\n}}\n",
                operator_jwt.display(),
                self.account.public_key(),
                sys = system.public_key(),
            ),
        )?;
        Ok(Access {
            server_args: vec!["-c".into(), config.display().to_string()],
            client: async_nats::ConnectOptions::with_credentials(&self.creds_text(&self.account))?,
        })
    }

    /// A `.creds` file for a new user of the account, in `dir`.
    pub fn user_creds(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.write_creds(name, &self.account)
    }

    /// A `.creds` file for a user signed by an account the server does not know.
    pub fn stranger_creds(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.write_creds(name, &KeyPair::new_account())
    }

    fn write_creds(&self, name: &str, account: &KeyPair) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{name}.creds"));
        std::fs::write(&path, self.creds_text(account))?;
        Ok(path)
    }

    /// A `.creds` file's text, `nsc`'s layout: a user JWT signed by `account`, its seed.
    fn creds_text(&self, account: &KeyPair) -> String {
        let user = KeyPair::new_user();
        let claims = serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        });
        let token = jwt(account, &user.public_key(), "screamer", claims);
        let seed = user.seed().expect("a new key has a seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }
}

/// A NATS JWT (`ed25519-nkey`) for `subject`, issued and signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{subject}-{iat}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("an issuer has a seed");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}
