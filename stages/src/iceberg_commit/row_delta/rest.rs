//! A staged row delta made visible through a REST catalog: the spec's commit request (`POST
//! /v1/{prefix}/namespaces/{ns}/tables/{table}`) with the updates `add-snapshot` and `set-snapshot-ref` (main)
//! and the requirements `assert-table-uuid` and `assert-ref-snapshot-id` (main is still the snapshot the delta
//! was built on). The server applies them to its metadata and writes the metadata JSON itself; a requirement
//! that no longer holds is its `409 Conflict`, our [`RowDeltaError::StaleBase`]. Metadata-only changes (the
//! expiry's `remove-snapshots`) go the same way ([`RestCommitter::commit_updates`]).
//!
//! The iceberg crate's REST client cannot send such a commit (its `TableCommit` cannot be built outside the
//! crate), so this module speaks the protocol itself, with the crate's own serializable `TableUpdate` and
//! `TableRequirement`. Authentication as the crate's client does it: a bearer `token`, or a `credential`
//! (`client_id:client_secret`) exchanged for one at the OAuth2 endpoint (`oauth2-server-uri`, default
//! `{uri}/v1/oauth/tokens`).

use std::collections::HashMap;

use iceberg::spec::{SnapshotReference, SnapshotRetention, MAIN_BRANCH};
use iceberg::{TableIdent, TableRequirement, TableUpdate};
use tokio::sync::Mutex;

use super::{RowDeltaError, StagedRowDelta};

/// Where and how to send commits to one REST catalog.
#[derive(Debug)]
pub struct RestCommitter {
    uri: String,
    warehouse: Option<String>,
    props: HashMap<String, String>,
    http: reqwest::Client,
    /// The bearer token and the path prefix, learned on first use (`/v1/config`, the OAuth2 endpoint).
    session: Mutex<Option<Session>>,
}

#[derive(Debug, Clone)]
struct Session {
    token: Option<String>,
    prefix: Option<String>,
}

impl RestCommitter {
    /// A committer for the REST catalog at `uri` (the catalog's `warehouse` and properties as configured:
    /// `token`, `credential`, `oauth2-server-uri`, `scope`, `prefix`).
    pub fn new(uri: &str, warehouse: Option<String>, props: HashMap<String, String>) -> Self {
        Self {
            uri: uri.trim_end_matches('/').to_string(),
            warehouse,
            props,
            http: reqwest::Client::new(),
            session: Mutex::new(None),
        }
    }

    /// Sends `staged`'s commit; on success the metadata JSON `stage` wrote is deleted (the server wrote its own).
    pub async fn commit(&self, staged: StagedRowDelta) -> Result<(), RowDeltaError> {
        let table = staged.table.identifier().clone();
        let metadata = staged.table.metadata();
        let snapshot = metadata.snapshot_by_id(staged.snapshot_id).ok_or_else(|| RowDeltaError::Rest {
            table: table.clone(),
            reason: "the staged snapshot is not in its metadata".into(),
        })?;
        let updates = vec![
            TableUpdate::AddSnapshot { snapshot: (**snapshot).clone() },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(staged.snapshot_id, SnapshotRetention::branch(None, None, None)),
            },
        ];
        self.send(&table, metadata.uuid(), snapshot.parent_snapshot_id(), updates, Vec::new(), &staged.base_location).await?;
        if let Err(e) = staged.table.file_io().delete(&staged.location).await {
            tracing::debug!(file = %staged.location, error = %crate::report::chain(&e), "could not delete the unused staged metadata");
        }
        Ok(())
    }

    /// Commits `updates` of `base`'s metadata that add no snapshot (the expiry of snapshots: `remove-snapshots`; a
    /// new schema or partition spec), only if `main` is still at `base`'s current snapshot and the current schema
    /// and default spec are still `base`'s.
    pub async fn commit_updates(&self, base: &iceberg::table::Table, updates: Vec<TableUpdate>) -> Result<(), RowDeltaError> {
        let metadata = base.metadata();
        let location = base.metadata_location().unwrap_or_default().to_string();
        let unchanged = vec![
            TableRequirement::CurrentSchemaIdMatch { current_schema_id: metadata.current_schema_id() },
            TableRequirement::DefaultSpecIdMatch { default_spec_id: metadata.default_partition_spec_id() },
        ];
        self.send(base.identifier(), metadata.uuid(), metadata.current_snapshot_id(), updates, unchanged, &location).await
    }

    /// The commit request: `updates` under the requirements that the table is still `uuid` and its `main` is at
    /// `main`, and the `more` requirements (`base_location` names that state in a [`RowDeltaError::StaleBase`]).
    async fn send(
        &self,
        table: &TableIdent,
        uuid: uuid::Uuid,
        main: Option<i64>,
        updates: Vec<TableUpdate>,
        more: Vec<TableRequirement>,
        base_location: &str,
    ) -> Result<(), RowDeltaError> {
        let failed = |reason: String| RowDeltaError::Rest { table: table.clone(), reason };
        let mut requirements = vec![
            TableRequirement::UuidMatch { uuid },
            TableRequirement::RefSnapshotIdMatch { r#ref: MAIN_BRANCH.to_string(), snapshot_id: main },
        ];
        requirements.extend(more);
        let body = serde_json::json!({
            "identifier": { "namespace": table.namespace().as_ref(), "name": table.name() },
            "requirements": requirements,
            "updates": updates,
        });
        let session = self.session().await.map_err(&failed)?;
        let namespace: Vec<String> = table.namespace().iter().map(|part| encode(part)).collect();
        let prefix = session.prefix.as_deref().map(|p| format!("{}/", p.trim_matches('/'))).unwrap_or_default();
        let url = format!("{}/v1/{prefix}namespaces/{}/tables/{}", self.uri, namespace.join("%1F"), encode(table.name()));
        let mut request = self.http.post(&url).json(&body);
        if let Some(token) = &session.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| failed(format!("POST {url}: {}", crate::report::chain(&e))))?;
        let status = response.status();
        if status == reqwest::StatusCode::CONFLICT {
            return Err(RowDeltaError::StaleBase { table: table.clone(), base: base_location.to_string() });
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(failed(format!("POST {url}: {status}: {}", text.chars().take(500).collect::<String>())));
        }
        Ok(())
    }

    /// The session: the prefix from `/v1/config` and the bearer token, asked for once.
    async fn session(&self) -> Result<Session, String> {
        let mut session = self.session.lock().await;
        if let Some(session) = session.as_ref() {
            return Ok(session.clone());
        }
        let token = match (self.props.get("token"), self.props.get("credential")) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(credential)) => Some(self.exchange(credential).await?),
            (None, None) => None,
        };
        let mut config = self.http.get(format!("{}/v1/config", self.uri));
        if let Some(warehouse) = &self.warehouse {
            config = config.query(&[("warehouse", warehouse)]);
        }
        if let Some(token) = &token {
            config = config.bearer_auth(token);
        }
        let answer = config.send().await.map_err(|e| format!("GET /v1/config: {}", crate::report::chain(&e)))?;
        if !answer.status().is_success() {
            return Err(format!("GET /v1/config: {}", answer.status()));
        }
        let config: serde_json::Value = answer.json().await.map_err(|e| format!("GET /v1/config: {e}"))?;
        let setting = |key: &str| {
            config["overrides"][key].as_str().or(self.props.get(key).map(String::as_str)).or(config["defaults"][key].as_str()).map(str::to_string)
        };
        let found = Session { token, prefix: setting("prefix") };
        *session = Some(found.clone());
        Ok(found)
    }

    /// A bearer token for `credential` (`client_id:client_secret`, or a secret alone) by the OAuth2 client
    /// credentials grant.
    async fn exchange(&self, credential: &str) -> Result<String, String> {
        let (id, secret) = credential.split_once(':').unwrap_or(("", credential));
        let endpoint = self.props.get("oauth2-server-uri").cloned().unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.uri));
        let scope = self.props.get("scope").map_or("catalog", String::as_str);
        let mut form = vec![("grant_type", "client_credentials"), ("client_secret", secret), ("scope", scope)];
        if !id.is_empty() {
            form.push(("client_id", id));
        }
        let body = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&");
        let answer = self
            .http
            .post(&endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("OAuth2 token request: {}", crate::report::chain(&e)))?;
        if !answer.status().is_success() {
            return Err(format!("OAuth2 token request: {}", answer.status()));
        }
        let token: serde_json::Value = answer.json().await.map_err(|e| format!("OAuth2 token answer: {e}"))?;
        token["access_token"].as_str().map(str::to_string).ok_or_else(|| "OAuth2 token answer has no access_token".to_string())
    }
}

/// Percent-encodes a path segment or form value (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::encode("t.dot name"), "t.dot%20name");
        assert_eq!(super::encode("ä/x"), "%C3%A4%2Fx");
    }
}
