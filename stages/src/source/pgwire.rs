//! [`ReplicationStream`] over the `pgwire-replication` crate: the only file that knows that client.
//!
//! The crate parses Begin, Commit and Message frames itself and hands them over as typed events; we write them
//! back into their pgoutput bytes so the decoder sees one uniform stream of pgoutput messages whatever the
//! client. The crate answers keepalives and sends standby status updates on a timer with the LSN we last
//! confirmed; it reports nothing beyond that, so the slot never passes what the buffer holds.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::config::Host;

use super::{Frame, ReplicationStream, SourceError};
use crate::position::Lsn;

/// What to connect to and where to start.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The pipeline, for error messages and the application name.
    pub pipeline: String,
    /// The slot to stream from.
    pub slot: String,
    /// The publication to send.
    pub publication: String,
    /// Where to start: the end LSN of the last transaction safe in the buffer (0 = the slot's own position).
    pub start: Lsn,
    /// How often to send a standby status update even when nothing changed.
    pub status_interval: Duration,
}

/// The LSN-confirmation side of a stream: what Enqueue has made durable.
pub type Durable = super::DurableReceiver;

/// A streaming replication session on one slot.
pub struct PgwireStream {
    client: ReplicationClient,
    settings: StreamSettings,
    durable: Durable,
    durable_open: bool,
    confirmed: Lsn,
    in_transaction: bool,
    last_commit_end: Lsn,
}

impl PgwireStream {
    /// Opens the replication connection and sends START_REPLICATION (proto_version 1, text values).
    /// Confirms to the slot whatever `durable` says, as soon as it says it (also while no frame arrives).
    pub async fn connect(
        source: &tokio_postgres::Config,
        settings: &StreamSettings,
        durable: Durable,
    ) -> Result<Self, SourceError> {
        let host = match source.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
            None => return Err(SourceError::Settings("the source URL names no host".into())),
        };
        let port = source.get_ports().first().copied().unwrap_or(5432);
        let user = source.get_user().unwrap_or("postgres").to_string();
        let password = source.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        let database = source.get_dbname().map_or_else(|| user.clone(), str::to_string);
        let tls = crate::store::tls::Tls::of(source).replication(&host);
        let config = ReplicationConfig::new(host, user, password, database, &settings.slot, settings.publication.as_str())
            .with_port(port)
            .with_tls(tls)
            .with_start_lsn(pgwire_replication::Lsn::from_u64(settings.start.0))
            .with_status_interval(settings.status_interval)
            .with_wakeup_interval(settings.status_interval)
            .with_application_name(format!("philotes_{}", settings.pipeline))
            // The walsender prints every value with its session's settings: pin them as every SQL session does.
            .with_options(crate::store::session_options(source.get_options()));
        let client = ReplicationClient::connect(config).await.map_err(|e| classify(&e, settings))?;
        Ok(Self {
            client,
            settings: settings.clone(),
            durable,
            durable_open: true,
            confirmed: settings.start,
            in_transaction: false,
            last_commit_end: settings.start,
        })
    }
}

fn classify(error: &PgWireError, settings: &StreamSettings) -> SourceError {
    let text = error.to_string();
    if text.contains("invalidated") {
        SourceError::SlotInvalidated { slot: settings.slot.clone(), pipeline: settings.pipeline.clone() }
    } else {
        SourceError::Replication(text)
    }
}

impl ReplicationStream for PgwireStream {
    async fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            let durable = *self.durable.borrow_and_update();
            self.confirm(durable);
            // Both branches are cancel safe (an mpsc receive and a watch change), so the engine may drop this call.
            let event = tokio::select! {
                event = self.client.recv() => event.map_err(|e| classify(&e, &self.settings))?,
                changed = self.durable.changed(), if self.durable_open => {
                    // An error means Enqueue is gone (the flow is ending): stop watching, keep serving frames.
                    self.durable_open = changed.is_ok();
                    continue;
                }
            };
            let Some(event) = event else { return Ok(None) };
            let frame = match event {
                ReplicationEvent::XLogData { wal_start, wal_end, data, .. } => {
                    Frame { wal_start: Lsn(wal_start.as_u64()), wal_end: Lsn(wal_end.as_u64()), data }
                }
                ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                    self.in_transaction = true;
                    let lsn = Lsn(final_lsn.as_u64());
                    Frame { wal_start: lsn, wal_end: lsn, data: begin_frame(lsn.0, commit_time_micros, xid) }
                }
                ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                    self.in_transaction = false;
                    self.last_commit_end = Lsn(end_lsn.as_u64());
                    let data = commit_frame(lsn.as_u64(), end_lsn.as_u64(), commit_time_micros);
                    Frame { wal_start: Lsn(lsn.as_u64()), wal_end: Lsn(end_lsn.as_u64()), data }
                }
                ReplicationEvent::Message { transactional, lsn, prefix, content } => {
                    let data = message_frame(transactional, lsn.as_u64(), &prefix, &content);
                    Frame { wal_start: Lsn(lsn.as_u64()), wal_end: Lsn(lsn.as_u64()), data }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Nothing of ours is in flight when no transaction is open and the last one is durable: the
                    // WAL up to the server's end holds no change for us, so let the slot release it (otherwise an
                    // idle publication pins WAL written for other tables forever).
                    if !self.in_transaction && self.confirmed >= self.last_commit_end {
                        let end = Lsn(wal_end.as_u64());
                        self.last_commit_end = self.last_commit_end.max(end);
                        self.confirm(end);
                    }
                    continue;
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
            };
            return Ok(Some(frame));
        }
    }

    fn confirm(&mut self, end_lsn: Lsn) {
        if end_lsn > self.confirmed {
            self.confirmed = end_lsn;
            self.client.update_applied_lsn(pgwire_replication::Lsn::from_u64(end_lsn.0));
        }
    }
}

/// pgoutput Begin: `B`, final LSN, commit time (µs since 2000-01-01, as the wire and the crate have it), xid.
fn begin_frame(final_lsn: u64, commit_time: i64, xid: u32) -> Bytes {
    let mut buf = BytesMut::with_capacity(21);
    buf.put_u8(b'B');
    buf.put_u64(final_lsn);
    buf.put_i64(commit_time);
    buf.put_u32(xid);
    buf.freeze()
}

/// pgoutput Commit: `C`, flags (always 0 in proto 1), commit LSN, end LSN, commit time.
fn commit_frame(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(26);
    buf.put_u8(b'C');
    buf.put_u8(0);
    buf.put_u64(commit_lsn);
    buf.put_u64(end_lsn);
    buf.put_i64(commit_time);
    buf.freeze()
}

/// pgoutput Message: `M`, flags (1 = transactional), LSN, prefix (NUL-terminated), content length, content.
fn message_frame(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(15 + prefix.len() + content.len());
    buf.put_u8(b'M');
    buf.put_u8(u8::from(transactional));
    buf.put_u64(lsn);
    buf.put_slice(prefix.as_bytes());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(content.len()).unwrap_or(u32::MAX));
    buf.put_slice(content);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::{parse, PgOutputMessage};

    #[test]
    fn rebuilt_boundary_frames_parse_back_to_what_the_client_reported() {
        // Commit times on the wire are µs since 2000-01-01; the parser hands out µs since 1970.
        let unix = 1_000_000 + 946_684_800_000_000;
        assert_eq!(
            parse(begin_frame(0x16B_3748, 1_000_000, 7)).expect("begin parses"),
            PgOutputMessage::Begin { final_lsn: Lsn(0x16B_3748), commit_ts: unix, xid: 7 }
        );
        assert_eq!(
            parse(commit_frame(0x16B_3748, 0x16B_3780, 1_000_000)).expect("commit parses"),
            PgOutputMessage::Commit { flags: 0, commit_lsn: Lsn(0x16B_3748), end_lsn: Lsn(0x16B_3780), commit_ts: unix }
        );
        let message = parse(message_frame(true, 0x16B_3700, "app", b"hello")).expect("message parses");
        let PgOutputMessage::Message(message) = message else { panic!("not a message: {message:?}") };
        assert!(format!("{message:?}").contains("app"), "{message:?}");
    }
}
