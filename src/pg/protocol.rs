//! The PostgreSQL frontend protocol as a sans-IO state machine: bytes received (after
//! TLS) go in, bytes to send and [`Event`]s come out; no socket, no clock (`now` is an
//! argument), so every step is unit-tested with canned server bytes.
//!
//! A connection goes through startup (user, database, `application_name=chatd`,
//! `client_encoding=UTF8`), authentication (trust, or SCRAM-SHA-256 with the server's
//! signature verified; every other method refused by name), then prepares the
//! statement catalogue once: a Parse and a Describe per statement, pipelined under
//! one Sync. From then on it runs [`Unit`]s: each query a Bind + Execute (binary
//! parameters and results), the unit closed by ONE Sync, so PostgreSQL runs it as one
//! implicit transaction; the ReadyForQuery that answers the Sync means it committed.
//! Units pipeline: many may be in flight, answered in the order sent. After an error
//! PostgreSQL skips to the Sync, so the first ErrorResponse is the unit's outcome and
//! the next unit is unaffected. Catalogue statements must not hold transaction
//! control (BEGIN/COMMIT): the unit is the transaction.
//!
//! A FATAL error, a message not allowed at that point or an unparseable one ends the
//! connection: every unit in flight or held gets `Err(ConnectionLost)` (its outcome is
//! unknown), then [`Event::Closed`] says why.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use postgres_types::{FromSql, Kind, ToSql, Type};

use super::{ConnectParams, PgError};

/// The longest backend message accepted: a longer length header is an error before
/// any of its bytes are buffered, so a broken or hostile server cannot make chatd
/// hold gigabytes for one message.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A statement of the catalogue, prepared once per connection.
#[derive(Debug, Clone)]
pub struct Statement {
    /// For logs and errors (the server-side name is `chatd_<index>`).
    pub name: &'static str,
    pub sql: &'static str,
    /// The declared type of each `$n`, which is also how parameters are encoded.
    pub params: &'static [Type],
}

/// A query parameter, encoded in binary for its statement's declared type.
pub type Param = Box<dyn ToSql + Send + Sync>;

/// One execution of a catalogue statement.
#[derive(Debug)]
pub struct Query {
    /// Index into the catalogue given at connect.
    pub statement: usize,
    pub params: Vec<Param>,
}

/// Queries run as one transaction: all commit or none.
#[derive(Debug, Default)]
pub struct Unit {
    pub queries: Vec<Query>,
    /// Instead of the queries: SQL text sent as one simple query (several statements,
    /// one implicit transaction, rows in text: [`Row::text`]). For what cannot be
    /// prepared ahead, such as the schema migrations that create the tables the
    /// catalogue names.
    pub simple: Option<String>,
}

impl Unit {
    pub fn simple(sql: impl Into<String>) -> Unit {
        Unit {
            queries: Vec::new(),
            simple: Some(sql.into()),
        }
    }
}

/// Names a unit handed to [`Protocol::send`]; its outcome carries the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u64);

/// What the connection tells its owner.
#[derive(Debug)]
pub enum Event {
    /// Authenticated and the catalogue is prepared: units now go out as sent.
    Ready,
    /// The outcome of a unit: one [`Rows`] per query, or the unit's first error.
    Unit {
        id: UnitId,
        outcome: Result<Vec<Rows>, PgError>,
    },
    /// The connection is over; units in flight got `ConnectionLost` just before.
    Closed(PgError),
}

/// The result of one query.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub rows: Vec<Row>,
    /// From the command tag: rows inserted, updated, deleted or selected.
    pub affected: u64,
}

/// One row; values are decoded on demand with [`Row::get`].
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Type]>,
    body: Bytes,
    ranges: Vec<Option<Range<usize>>>,
    /// A simple query's row: values in text.
    text: bool,
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Row {
    /// The number of columns.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Column `index` as `T` (`Option<T>` for a column that may be NULL). A wrong
    /// type, a NULL read as a non-Option or an index past the end is an error, never
    /// a panic.
    pub fn get<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T, PgError> {
        let (Some(ty), Some(range)) = (self.columns.get(index), self.ranges.get(index)) else {
            return Err(PgError::Decode(format!(
                "no column {index}: the row has {}",
                self.ranges.len()
            )));
        };
        if self.text {
            return Err(PgError::Decode(
                "a simple query's row is text: read it with Row::text".into(),
            ));
        }
        if !T::accepts(ty) {
            return Err(PgError::Decode(format!(
                "column {index} is {ty}, which cannot be read as {}",
                std::any::type_name::<T>()
            )));
        }
        let raw = range.clone().map(|r| &self.body[r]);
        T::from_sql_nullable(ty, raw)
            .map_err(|e| PgError::Decode(format!("column {index} ({ty}): {e}")))
    }
}

/// The SSLRequest packet, sent before anything else when TLS is wanted.
pub fn ssl_request() -> BytesMut {
    let mut buf = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut buf);
    buf
}

/// Judges everything read after an SSLRequest and before the TLS handshake: exactly
/// `S` goes on with TLS. Any byte after the `S` was sent in plaintext where only TLS
/// may follow (the CVE-2021-23222 injection: a man in the middle answering for the
/// server), so it ends the connection.
pub fn check_tls_answer(received: &[u8]) -> Result<(), PgError> {
    match received {
        [b'S'] => Ok(()),
        [b'S', ..] => Err(PgError::Protocol(
            "the server sent plaintext after accepting TLS, before the handshake (refused: \
             it could be injected by a man in the middle)"
                .into(),
        )),
        [b'N', ..] => Err(PgError::NoTls),
        [b'E', ..] => Err(PgError::Protocol(
            "the server answered the TLS request with an error (a very old server?)".into(),
        )),
        _ => Err(PgError::Protocol(
            "the server's answer to the TLS request is neither S nor N".into(),
        )),
    }
}

/// Where the connection stands.
enum State {
    /// Startup sent; waiting for the server's authentication request.
    Authenticating,
    /// SCRAM client-first sent; waiting for the server-first message.
    ScramContinue(Box<ScramSha256>),
    /// SCRAM client-final sent; waiting for the server's signature.
    ScramFinal(Box<ScramSha256>),
    /// The server proved it knows the password; waiting for AuthenticationOk.
    AwaitAuthOk,
    /// Authenticated; waiting for the first ReadyForQuery.
    Starting,
    /// The catalogue's Parse/Describe sent; `described` statements answered so far.
    Preparing { described: usize },
    /// Units flow.
    Ready,
    /// Over (or a message being handled: the state is taken out meanwhile).
    Closed,
}

/// A unit sent (or held until ready) and not yet answered.
struct InFlight {
    id: UnitId,
    sent_at: Instant,
    /// A simple query: its results are counted by the server, its rows are text, and
    /// each statement's columns come with its RowDescription.
    simple: bool,
    simple_columns: Arc<[Type]>,
    statements: Vec<usize>,
    results: Vec<Rows>,
    current: Vec<Row>,
    error: Option<PgError>,
}

/// One connection's protocol state. See the module documentation.
pub struct Protocol {
    state: State,
    /// Named in authentication errors.
    user: String,
    password: Option<String>,
    catalogue: Arc<[Statement]>,
    /// Result column types per statement, learned from Describe.
    columns: Vec<Arc<[Type]>>,
    input: BytesMut,
    output: BytesMut,
    /// Units sent before the catalogue is prepared, released on Ready.
    held: BytesMut,
    in_flight: VecDeque<InFlight>,
    events: VecDeque<Event>,
    next_id: u64,
    /// Set once [`Event::Closed`] is queued; nothing is read or sent afterwards.
    finished: bool,
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protocol")
            .field("user", &self.user)
            .field("ready", &self.is_ready())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

fn statement_name(index: usize) -> String {
    format!("chatd_{index}")
}

/// The fields of an ErrorResponse or NoticeResponse: (severity, sqlstate, message).
fn error_fields(mut fields: ErrorFields<'_>) -> Result<(String, String, String), PgError> {
    let (mut severity, mut sqlstate, mut message) = (String::new(), String::new(), String::new());
    while let Some(field) = fields
        .next()
        .map_err(|e| PgError::Protocol(format!("bad error message: {e}")))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            // V is the untranslated severity (9.6+); S may be localised.
            b'V' => severity = value,
            b'S' if severity.is_empty() => severity = value,
            b'C' => sqlstate = value,
            b'M' => message = value,
            _ => {}
        }
    }
    Ok((severity, sqlstate, message))
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an authentication request",
    }
}

/// The affected-row count at the end of a command tag (`INSERT 0 5`, `UPDATE 3`,
/// `SELECT 2`); 0 for tags without one (`CREATE TABLE`).
fn affected_rows(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Row {
    /// Column `index` of a simple query's row, as the server wrote it (None for NULL).
    pub fn text(&self, index: usize) -> Result<Option<&str>, PgError> {
        let Some(range) = self.ranges.get(index) else {
            return Err(PgError::Decode(format!(
                "no column {index}: the row has {}",
                self.ranges.len()
            )));
        };
        if !self.text {
            return Err(PgError::Decode(
                "a prepared query's row is binary: read it with Row::get".into(),
            ));
        }
        range
            .clone()
            .map(|r| {
                std::str::from_utf8(&self.body[r])
                    .map_err(|e| PgError::Decode(format!("column {index}: {e}")))
            })
            .transpose()
    }
}

/// The column types a RowDescription announces.
fn column_types(
    body: &postgres_protocol::message::backend::RowDescriptionBody,
) -> Result<Arc<[Type]>, PgError> {
    let mut types = Vec::new();
    let mut fields = body.fields();
    loop {
        match fields.next() {
            Ok(Some(field)) => types.push(Type::from_oid(field.type_oid()).unwrap_or_else(|| {
                Type::new(
                    format!("oid {}", field.type_oid()),
                    field.type_oid(),
                    Kind::Simple,
                    String::new(),
                )
            })),
            Ok(None) => return Ok(Arc::from(types)),
            Err(e) => return Err(PgError::Protocol(format!("bad RowDescription: {e}"))),
        }
    }
}

/// Writes Bind + Execute for each query and one Sync (or the simple query).
fn encode_unit(catalogue: &[Statement], unit: &Unit, buf: &mut BytesMut) -> Result<(), PgError> {
    if let Some(sql) = &unit.simple {
        return frontend::query(sql, buf)
            .map_err(|e| PgError::Encode(format!("simple query: {e}")));
    }
    for query in &unit.queries {
        let statement = catalogue.get(query.statement).ok_or_else(|| {
            PgError::Encode(format!(
                "no statement {} in the catalogue of {}",
                query.statement,
                catalogue.len()
            ))
        })?;
        if query.params.len() != statement.params.len() {
            return Err(PgError::Encode(format!(
                "statement {} takes {} parameters, {} given",
                statement.name,
                statement.params.len(),
                query.params.len()
            )));
        }
        let values = query.params.iter().zip(statement.params.iter());
        frontend::bind(
            "",
            &statement_name(query.statement),
            [1],
            values,
            |(value, ty), buf| {
                value.to_sql_checked(ty, buf).map(|is_null| match is_null {
                    postgres_types::IsNull::Yes => postgres_protocol::IsNull::Yes,
                    postgres_types::IsNull::No => postgres_protocol::IsNull::No,
                })
            },
            [1],
            buf,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => {
                PgError::Encode(format!("statement {}: {e}", statement.name))
            }
            frontend::BindError::Serialization(e) => {
                PgError::Encode(format!("statement {}: {e}", statement.name))
            }
        })?;
        frontend::execute("", 0, buf)
            .map_err(|e| PgError::Encode(format!("statement {}: {e}", statement.name)))?;
    }
    frontend::sync(buf);
    Ok(())
}

impl Protocol {
    /// A new connection's protocol; its output starts with the StartupMessage.
    pub fn new(params: &ConnectParams, catalogue: Arc<[Statement]>) -> Protocol {
        let mut protocol = Protocol {
            state: State::Authenticating,
            user: params.user.clone(),
            password: params.password.clone(),
            catalogue,
            columns: Vec::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            held: BytesMut::new(),
            in_flight: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            finished: false,
        };
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("application_name", "chatd"),
            ("client_encoding", "UTF8"),
        ];
        if let Err(e) = frontend::startup_message(startup, &mut protocol.output) {
            protocol.fail(PgError::Url(format!("user or database name: {e}")));
        }
        protocol
    }

    /// Authenticated with the catalogue prepared.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    pub fn is_closed(&self) -> bool {
        self.finished
    }

    /// Units sent (or held) and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When the oldest unanswered unit was handed to [`Protocol::send`].
    pub fn oldest_unanswered_since(&self) -> Option<Instant> {
        self.in_flight.front().map(|unit| unit.sent_at)
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Marks `n` bytes of [`Protocol::output`] as sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.advance(n.min(self.output.len()));
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues a unit. Before the connection is ready it is held and goes out on
    /// Ready; a unit that cannot be encoded (unknown statement, wrong parameter count
    /// or type) is not sent and fails at once.
    pub fn send(&mut self, unit: Unit, now: Instant) -> UnitId {
        let id = UnitId(self.next_id);
        self.next_id += 1;
        if self.is_closed() {
            self.events.push_back(Event::Unit {
                id,
                outcome: Err(PgError::ConnectionLost),
            });
            return id;
        }
        let mut encoded = BytesMut::new();
        if let Err(e) = encode_unit(&self.catalogue, &unit, &mut encoded) {
            self.events.push_back(Event::Unit {
                id,
                outcome: Err(e),
            });
            return id;
        }
        if self.is_ready() {
            self.output.extend_from_slice(&encoded);
        } else {
            self.held.extend_from_slice(&encoded);
        }
        self.in_flight.push_back(InFlight {
            id,
            sent_at: now,
            simple: unit.simple.is_some(),
            simple_columns: Arc::from(Vec::new()),
            statements: unit.queries.iter().map(|q| q.statement).collect(),
            results: Vec::new(),
            current: Vec::new(),
            error: None,
        });
        id
    }

    /// Ends the connection politely: a Terminate goes out, units in flight are lost.
    pub fn terminate(&mut self) {
        if !self.is_closed() {
            self.output.clear();
            frontend::terminate(&mut self.output);
            self.fail(PgError::ConnectionLost);
        }
    }

    /// Ends the connection with `error`: every unit in flight or held fails with
    /// ConnectionLost, then Closed. Nothing is read afterwards.
    pub fn fail(&mut self, error: PgError) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.state = State::Closed;
        self.held.clear();
        self.input.clear();
        for unit in self.in_flight.drain(..) {
            self.events.push_back(Event::Unit {
                id: unit.id,
                outcome: Err(PgError::ConnectionLost),
            });
        }
        self.events.push_back(Event::Closed(error));
    }

    /// Feeds bytes received from the server.
    pub fn receive(&mut self, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.input.extend_from_slice(data);
        while !self.is_closed() {
            if self.input.len() >= 5 {
                let length = u32::from_be_bytes([
                    self.input[1],
                    self.input[2],
                    self.input[3],
                    self.input[4],
                ]) as usize;
                if length > MAX_MESSAGE_BYTES {
                    self.fail(PgError::Protocol(format!(
                        "a message of {length} bytes (more than {MAX_MESSAGE_BYTES})"
                    )));
                    return;
                }
            }
            match Message::parse(&mut self.input) {
                Ok(Some(message)) => {
                    if let Err(e) = self.handle(message) {
                        self.fail(e);
                    }
                }
                Ok(None) => return,
                Err(e) => self.fail(PgError::Protocol(format!("unreadable message: {e}"))),
            }
        }
    }

    fn handle(&mut self, message: Message) -> Result<(), PgError> {
        match message {
            Message::NoticeResponse(body) => {
                let (severity, code, text) = error_fields(body.fields())?;
                log::debug!("PostgreSQL {severity} {code}: {text}");
                return Ok(());
            }
            Message::ParameterStatus(_) | Message::NotificationResponse(_) => return Ok(()),
            Message::ErrorResponse(body) => return self.handle_error(error_fields(body.fields())?),
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (next, result) = self.step(state, message);
        self.state = next;
        result
    }

    fn handle_error(&mut self, fields: (String, String, String)) -> Result<(), PgError> {
        let (severity, sqlstate, message) = fields;
        let authenticating = matches!(
            self.state,
            State::Authenticating
                | State::ScramContinue(_)
                | State::ScramFinal(_)
                | State::AwaitAuthOk
        );
        if authenticating && (sqlstate == "28P01" || sqlstate == "28000") {
            return Err(PgError::AuthFailed { message });
        }
        let error = PgError::Server {
            sqlstate,
            message,
            severity: severity.clone(),
        };
        match &self.state {
            State::Ready if severity != "FATAL" && severity != "PANIC" => {
                let unit = self.in_flight.front_mut().ok_or_else(|| {
                    PgError::Protocol("an error while no unit is in flight".into())
                })?;
                unit.error.get_or_insert(error);
                Ok(())
            }
            State::Preparing { described } => {
                let name = self.catalogue.get(*described).map_or("?", |s| s.name);
                let PgError::Server {
                    sqlstate,
                    message,
                    severity,
                } = error
                else {
                    return Err(error);
                };
                Err(PgError::Server {
                    sqlstate,
                    message: format!("preparing statement {name}: {message}"),
                    severity,
                })
            }
            _ => Err(error),
        }
    }

    fn unexpected(message: &Message, state: &State) -> PgError {
        let during = match state {
            State::Authenticating
            | State::ScramContinue(_)
            | State::ScramFinal(_)
            | State::AwaitAuthOk => "authentication",
            State::Starting => "startup",
            State::Preparing { .. } => "preparing the statements",
            State::Ready => "running units",
            State::Closed => "close",
        };
        PgError::Protocol(format!(
            "unexpected {} during {during}",
            message_name(message)
        ))
    }

    /// One message in one state: the next state and whether the connection goes on.
    fn step(&mut self, state: State, message: Message) -> (State, Result<(), PgError>) {
        match (state, message) {
            (State::Authenticating, Message::AuthenticationOk) => (State::Starting, Ok(())),
            (State::Authenticating, Message::AuthenticationSasl(body)) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Ok(Some(mechanism)) = mechanisms.next() {
                    scram |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !scram {
                    return (
                        State::Closed,
                        Err(PgError::AuthUnsupported {
                            method: "an unknown SASL",
                        }),
                    );
                }
                let Some(password) = &self.password else {
                    return (State::Closed, Err(PgError::NoPassword));
                };
                // unsupported: chatd does not do channel binding, and says so ("n"),
                // so a server offering SCRAM-SHA-256-PLUS does not see a downgrade.
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                match frontend::sasl_initial_response(
                    sasl::SCRAM_SHA_256,
                    scram.message(),
                    &mut self.output,
                ) {
                    Ok(()) => (State::ScramContinue(Box::new(scram)), Ok(())),
                    Err(e) => (State::Closed, Err(PgError::Protocol(e.to_string()))),
                }
            }
            (State::ScramContinue(mut scram), Message::AuthenticationSaslContinue(body)) => {
                if let Err(e) = scram.update(body.data()) {
                    return (
                        State::Closed,
                        Err(PgError::Protocol(format!("bad SCRAM server message: {e}"))),
                    );
                }
                match frontend::sasl_response(scram.message(), &mut self.output) {
                    Ok(()) => (State::ScramFinal(scram), Ok(())),
                    Err(e) => (State::Closed, Err(PgError::Protocol(e.to_string()))),
                }
            }
            (State::ScramFinal(mut scram), Message::AuthenticationSaslFinal(body)) => {
                match scram.finish(body.data()) {
                    Ok(()) => (State::AwaitAuthOk, Ok(())),
                    Err(e) => (
                        State::Closed,
                        Err(PgError::AuthFailed {
                            message: format!(
                                "the server's SCRAM signature does not verify ({e}): it does \
                                 not know the password of user {:?}",
                                self.user
                            ),
                        }),
                    ),
                }
            }
            (State::AwaitAuthOk, Message::AuthenticationOk) => (State::Starting, Ok(())),
            (State::ScramContinue(_) | State::ScramFinal(_), Message::AuthenticationOk) => (
                State::Closed,
                Err(PgError::AuthFailed {
                    message: "the server ended SCRAM without proving it knows the password".into(),
                }),
            ),
            (State::Authenticating, message) => {
                let method = match message {
                    Message::AuthenticationMd5Password(_) => "md5 password",
                    Message::AuthenticationCleartextPassword => "cleartext password",
                    Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => "gss",
                    Message::AuthenticationSspi => "sspi",
                    Message::AuthenticationKerberosV5 => "kerberos v5",
                    Message::AuthenticationScmCredential => "scm credential",
                    other => {
                        let error = Self::unexpected(&other, &State::Authenticating);
                        return (State::Closed, Err(error));
                    }
                };
                (State::Closed, Err(PgError::AuthUnsupported { method }))
            }
            (State::Starting, Message::BackendKeyData(_)) => (State::Starting, Ok(())),
            (State::Starting, Message::ReadyForQuery(_)) => {
                for (index, statement) in self.catalogue.iter().enumerate() {
                    let name = statement_name(index);
                    let types = statement.params.iter().map(Type::oid);
                    let written = frontend::parse(&name, statement.sql, types, &mut self.output)
                        .and_then(|()| frontend::describe(b'S', &name, &mut self.output));
                    if let Err(e) = written {
                        return (
                            State::Closed,
                            Err(PgError::Encode(format!(
                                "statement {}: {e}",
                                statement.name
                            ))),
                        );
                    }
                }
                frontend::sync(&mut self.output);
                (State::Preparing { described: 0 }, Ok(()))
            }
            (
                State::Preparing { described },
                Message::ParseComplete | Message::ParameterDescription(_),
            ) => (State::Preparing { described }, Ok(())),
            (State::Preparing { described }, Message::NoData) => {
                self.columns.push(Arc::from(Vec::new()));
                (
                    State::Preparing {
                        described: described + 1,
                    },
                    Ok(()),
                )
            }
            (State::Preparing { described }, Message::RowDescription(body)) => {
                let types = match column_types(&body) {
                    Ok(types) => types,
                    Err(e) => return (State::Closed, Err(e)),
                };
                self.columns.push(types);
                (
                    State::Preparing {
                        described: described + 1,
                    },
                    Ok(()),
                )
            }
            (State::Preparing { described }, Message::ReadyForQuery(_)) => {
                if described != self.catalogue.len() {
                    return (
                        State::Closed,
                        Err(PgError::Protocol(format!(
                            "{described} of {} statements described",
                            self.catalogue.len()
                        ))),
                    );
                }
                self.events.push_back(Event::Ready);
                let held = std::mem::take(&mut self.held);
                self.output.extend_from_slice(&held);
                (State::Ready, Ok(()))
            }
            (State::Ready, message) => {
                let result = self.step_ready(message);
                (State::Ready, result)
            }
            (state, message) => {
                let error = Self::unexpected(&message, &state);
                (State::Closed, Err(error))
            }
        }
    }

    /// A message while units flow: it belongs to the oldest unit in flight.
    fn step_ready(&mut self, message: Message) -> Result<(), PgError> {
        let Some(unit) = self.in_flight.front_mut() else {
            return Err(Self::unexpected(&message, &State::Ready));
        };
        match message {
            Message::BindComplete => Ok(()),
            Message::RowDescription(body) if unit.simple => {
                unit.simple_columns = column_types(&body)?;
                Ok(())
            }
            Message::DataRow(body) if unit.error.is_none() => {
                // A simple query's columns came with its RowDescription (text); a
                // prepared statement's were described when it was prepared (binary).
                let columns = if unit.simple {
                    unit.simple_columns.clone()
                } else {
                    let statement = unit
                        .statements
                        .get(unit.results.len())
                        .copied()
                        .ok_or_else(|| PgError::Protocol("a row past the unit's queries".into()))?;
                    self.columns.get(statement).cloned().ok_or_else(|| {
                        PgError::Protocol("a row for an undescribed statement".into())
                    })?
                };
                let ranges: Vec<Option<Range<usize>>> = body
                    .ranges()
                    .collect()
                    .map_err(|e| PgError::Protocol(format!("bad DataRow: {e}")))?;
                if ranges.len() != columns.len() {
                    return Err(PgError::Protocol(format!(
                        "a row of {} columns where {} were described",
                        ranges.len(),
                        columns.len()
                    )));
                }
                unit.current.push(Row {
                    columns,
                    body: body.buffer_bytes().clone(),
                    ranges,
                    text: unit.simple,
                });
                Ok(())
            }
            Message::CommandComplete(body) if unit.error.is_none() => {
                let tag = body
                    .tag()
                    .map_err(|e| PgError::Protocol(format!("bad CommandComplete: {e}")))?;
                let rows = std::mem::take(&mut unit.current);
                unit.results.push(Rows {
                    rows,
                    affected: affected_rows(tag),
                });
                Ok(())
            }
            Message::EmptyQueryResponse if unit.error.is_none() => {
                unit.results.push(Rows::default());
                Ok(())
            }
            Message::ReadyForQuery(_) => {
                let Some(unit) = self.in_flight.pop_front() else {
                    return Err(PgError::Protocol("ReadyForQuery without a unit".into()));
                };
                let outcome = match unit.error {
                    Some(error) => Err(error),
                    None if unit.simple || unit.results.len() == unit.statements.len() => {
                        Ok(unit.results)
                    }
                    None => {
                        return Err(PgError::Protocol(format!(
                            "{} results for a unit of {} queries",
                            unit.results.len(),
                            unit.statements.len()
                        )));
                    }
                };
                self.events.push_back(Event::Unit {
                    id: unit.id,
                    outcome,
                });
                Ok(())
            }
            other => Err(Self::unexpected(&other, &State::Ready)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pg::{Target, TlsMode};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        msg(b'R', &body)
    }

    fn ready_for_query() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn error(severity: &str, code: &str, message: &str) -> Vec<u8> {
        let body = format!("S{severity}\0V{severity}\0C{code}\0M{message}\0\0");
        msg(b'E', body.as_bytes())
    }

    fn notice(message: &str) -> Vec<u8> {
        let body = format!("SNOTICE\0VNOTICE\0C00000\0M{message}\0\0");
        msg(b'N', body.as_bytes())
    }

    fn row_description(types: &[Type]) -> Vec<u8> {
        let mut body = (types.len() as u16).to_be_bytes().to_vec();
        for (i, ty) in types.iter().enumerate() {
            body.extend_from_slice(format!("c{i}\0").as_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&ty.oid().to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes());
        }
        msg(b'T', &body)
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as u16).to_be_bytes().to_vec();
        for value in values {
            match value {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        msg(b'D', &body)
    }

    fn command_complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }

    fn params(password: Option<&str>) -> ConnectParams {
        ConnectParams {
            user: "chatd".into(),
            dbname: "chat".into(),
            target: Target::Tcp {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            password: password.map(str::to_string),
            tls: TlsMode::Disable,
            ca_roots: None,
        }
    }

    const INSERT: usize = 0;
    const SELECT: usize = 1;

    fn catalogue() -> Arc<[Statement]> {
        Arc::from(vec![
            Statement {
                name: "insert_user",
                sql: "INSERT INTO users (name) VALUES ($1)",
                params: &[Type::TEXT],
            },
            Statement {
                name: "user_by_id",
                sql: "SELECT id, name FROM users WHERE id = $1",
                params: &[Type::INT8],
            },
        ])
    }

    /// The server's answers from startup to the catalogue prepared (trust).
    fn server_startup() -> Vec<u8> {
        let mut bytes = auth(0, b"");
        bytes.extend(msg(b'S', b"server_version\x0015.18\0"));
        bytes.extend(msg(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
        bytes.extend(ready_for_query());
        bytes.extend(server_prepared());
        bytes
    }

    fn server_prepared() -> Vec<u8> {
        let mut bytes = msg(b'1', b"");
        bytes.extend(msg(b't', &[0, 1, 0, 0, 0, 25]));
        bytes.extend(msg(b'n', b""));
        bytes.extend(msg(b'1', b""));
        bytes.extend(msg(b't', &[0, 1, 0, 0, 0, 20]));
        bytes.extend(row_description(&[Type::INT8, Type::TEXT]));
        bytes.extend(ready_for_query());
        bytes
    }

    /// The frontend message tags in `bytes` (after the untagged startup message).
    fn tags(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            out.push(rest[0]);
            rest = &rest[1 + len..];
        }
        out
    }

    fn take_output(p: &mut Protocol) -> Vec<u8> {
        let out = p.output().to_vec();
        p.consume_output(out.len());
        out
    }

    fn events(p: &mut Protocol) -> Vec<Event> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    fn insert(name: &str) -> Query {
        Query {
            statement: INSERT,
            params: vec![Box::new(name.to_string())],
        }
    }

    fn select(id: i64) -> Query {
        Query {
            statement: SELECT,
            params: vec![Box::new(id)],
        }
    }

    fn ready_protocol() -> Protocol {
        let mut p = Protocol::new(&params(None), catalogue());
        take_output(&mut p);
        p.receive(&server_startup());
        assert!(matches!(events(&mut p)[..], [Event::Ready]));
        take_output(&mut p);
        p
    }

    fn closed_with(events: &[Event]) -> &PgError {
        match events.last() {
            Some(Event::Closed(e)) => e,
            other => panic!("expected Closed last, got {other:?}"),
        }
    }

    #[test]
    fn trust_startup_prepares_the_catalogue_once_then_is_ready() {
        let mut p = Protocol::new(&params(None), catalogue());
        let startup = take_output(&mut p);
        assert_eq!(&startup[4..8], &196_608u32.to_be_bytes(), "protocol 3.0");
        let text = String::from_utf8_lossy(&startup);
        for pair in [
            "user\0chatd\0",
            "database\0chat\0",
            "application_name\0chatd\0",
            "client_encoding\0UTF8\0",
        ] {
            assert!(text.contains(pair), "{pair:?} in {text:?}");
        }
        p.receive(&auth(0, b""));
        p.receive(&msg(b'S', b"TimeZone\0UTC\0"));
        assert!(p.output().is_empty());
        p.receive(&ready_for_query());
        let prepare = take_output(&mut p);
        assert_eq!(tags(&prepare), b"PDPDS", "parse+describe each, one sync");
        let text = String::from_utf8_lossy(&prepare);
        assert!(text.contains("chatd_0\0INSERT INTO users (name) VALUES ($1)\0"));
        assert!(!p.is_ready());
        p.receive(&server_prepared());
        assert!(matches!(events(&mut p)[..], [Event::Ready]));
        assert!(p.is_ready());
        assert!(p.output().is_empty(), "nothing is prepared twice");
    }

    #[test]
    fn units_sent_before_ready_are_held_then_answered_in_order() {
        let t0 = Instant::now();
        let mut p = Protocol::new(&params(None), catalogue());
        let a = p.send(
            Unit {
                queries: vec![insert("alice"), select(1)],
                simple: None,
            },
            t0,
        );
        let b = p.send(
            Unit {
                queries: vec![],
                simple: None,
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!((p.in_flight(), p.oldest_unanswered_since()), (2, Some(t0)));
        take_output(&mut p);
        p.receive(&server_startup());
        let out = take_output(&mut p);
        // The prepare step first, then the held units: Bind/Execute per query, one Sync.
        assert_eq!(tags(&out), b"PDPDSBEBESS");
        let mut answer = msg(b'2', b"");
        answer.extend(command_complete("INSERT 0 1"));
        answer.extend(msg(b'2', b""));
        answer.extend(notice("just so you know"));
        answer.extend(data_row(&[Some(&7i64.to_be_bytes()), Some(b"alice")]));
        answer.extend(command_complete("SELECT 1"));
        answer.extend(ready_for_query());
        p.receive(&answer);
        assert_eq!(
            p.oldest_unanswered_since(),
            Some(t0 + Duration::from_secs(1))
        );
        p.receive(&ready_for_query());
        let got = events(&mut p);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(got[0], Event::Ready));
        let Event::Unit {
            id,
            outcome: Ok(results),
        } = &got[1]
        else {
            panic!("{got:?}")
        };
        assert_eq!(*id, a);
        assert_eq!(results.len(), 2);
        assert_eq!((results[0].affected, results[0].rows.len()), (1, 0));
        let row = &results[1].rows[0];
        assert_eq!(row.get::<i64>(0), Ok(7));
        assert_eq!(row.get::<&str>(1), Ok("alice"));
        assert!(matches!(&got[2], Event::Unit { id, outcome: Ok(r) } if *id == b && r.is_empty()));
        assert_eq!((p.in_flight(), p.oldest_unanswered_since()), (0, None));
    }

    #[test]
    fn an_error_fails_exactly_its_unit_and_the_next_succeeds() {
        let mut p = ready_protocol();
        let now = Instant::now();
        let a = p.send(
            Unit {
                queries: vec![insert("bob"), insert("bob")],
                simple: None,
            },
            now,
        );
        let b = p.send(
            Unit {
                queries: vec![insert("carol")],
                simple: None,
            },
            now,
        );
        assert_eq!(tags(&take_output(&mut p)), b"BEBESBES");
        let mut answer = msg(b'2', b"");
        answer.extend(command_complete("INSERT 0 1"));
        answer.extend(msg(b'2', b""));
        answer.extend(error("ERROR", "23505", "duplicate key value"));
        answer.extend(msg(b'Z', b"I"));
        answer.extend(msg(b'2', b""));
        answer.extend(command_complete("INSERT 0 1"));
        answer.extend(ready_for_query());
        p.receive(&answer);
        let got = events(&mut p);
        assert_eq!(got.len(), 2, "{got:?}");
        match &got[0] {
            Event::Unit {
                id,
                outcome: Err(e),
            } => {
                assert_eq!(*id, a);
                assert!(e.is_unique_violation(), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&got[1], Event::Unit { id, outcome: Ok(r) } if *id == b && r[0].affected == 1)
        );
        assert!(p.is_ready());
    }

    /// A whole session's server bytes.
    fn whole_session() -> Vec<u8> {
        let mut bytes = server_startup();
        bytes.extend(msg(b'2', b""));
        bytes.extend(data_row(&[Some(&3i64.to_be_bytes()), None]));
        bytes.extend(data_row(&[Some(&4i64.to_be_bytes()), Some(b"dave")]));
        bytes.extend(command_complete("SELECT 2"));
        bytes.extend(ready_for_query());
        bytes.extend(msg(b'2', b""));
        bytes.extend(error("ERROR", "22P02", "bad input"));
        bytes.extend(ready_for_query());
        bytes
    }

    fn run_session(chunks: &[&[u8]]) -> String {
        let mut p = Protocol::new(&params(None), catalogue());
        let now = Instant::now();
        p.send(
            Unit {
                queries: vec![select(3)],
                simple: None,
            },
            now,
        );
        p.send(
            Unit {
                queries: vec![select(4)],
                simple: None,
            },
            now,
        );
        for chunk in chunks {
            p.receive(chunk);
        }
        let mut summary = String::new();
        for event in events(&mut p) {
            match event {
                Event::Ready => summary.push_str("ready;"),
                Event::Unit { id, outcome } => match outcome {
                    Ok(results) => {
                        summary.push_str(&format!("{}:", id.0));
                        for row in &results[0].rows {
                            summary.push_str(&format!(
                                "{:?}/{:?},",
                                row.get::<i64>(0),
                                row.get::<Option<String>>(1)
                            ));
                        }
                        summary.push(';');
                    }
                    Err(e) => summary.push_str(&format!("{}:{};", id.0, e.code())),
                },
                Event::Closed(e) => summary.push_str(&format!("closed {e};")),
            }
        }
        summary
    }

    #[test]
    fn input_split_at_every_byte_gives_the_same_events() {
        let bytes = whole_session();
        let whole = run_session(&[&bytes]);
        assert_eq!(
            whole,
            "ready;0:Ok(3)/Ok(None),Ok(4)/Ok(Some(\"dave\")),;1:server;"
        );
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(run_session(&[a, b]), whole, "split at {split}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run_session(&single), whole);
    }

    #[test]
    fn md5_and_cleartext_are_refused_naming_the_method() {
        for (request, method) in [
            (auth(5, &[1, 2, 3, 4]), "md5 password"),
            (auth(3, b""), "cleartext password"),
            (auth(7, b""), "gss"),
            (auth(9, b""), "sspi"),
            (auth(2, b""), "kerberos v5"),
        ] {
            let mut p = Protocol::new(&params(Some("pw")), catalogue());
            let held = p.send(Unit::default(), Instant::now());
            take_output(&mut p);
            p.receive(&request);
            let got = events(&mut p);
            assert!(
                matches!(&got[0], Event::Unit { id, outcome: Err(PgError::ConnectionLost) } if *id == held)
            );
            let e = closed_with(&got);
            assert_eq!(*e, PgError::AuthUnsupported { method });
            assert_eq!(
                e.to_string(),
                format!(
                    "the server asks for {method} authentication; chatd supports \
                     scram-sha-256 and trust"
                )
            );
            assert!(p.output().is_empty(), "no password sent for {method}");
            assert!(p.is_closed());
        }
    }

    #[test]
    fn a_wrong_password_is_auth_failed_with_the_servers_words() {
        let mut p = Protocol::new(&params(Some("pw")), catalogue());
        p.receive(&error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"chatd\"",
        ));
        let got = events(&mut p);
        let e = closed_with(&got);
        assert_eq!(e.code(), "auth_failed");
        assert!(
            e.to_string()
                .contains("password authentication failed for user \"chatd\"")
        );
    }

    #[test]
    fn scram_starts_without_channel_binding_and_the_server_must_prove_itself() {
        let mut p = Protocol::new(&params(Some("pw")), catalogue());
        take_output(&mut p);
        p.receive(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"));
        let first = take_output(&mut p);
        assert_eq!(first[0], b'p');
        let text = String::from_utf8_lossy(&first);
        assert!(text.contains("SCRAM-SHA-256\0"), "{text:?}");
        assert!(text.contains("n,,n=,r="), "{text:?}");
        // A server (or impostor) that skips the SCRAM exchange is refused.
        p.receive(&auth(0, b""));
        let e = closed_with(&events(&mut p)).clone();
        assert_eq!(e.code(), "auth_failed");
        assert!(e.to_string().contains("without proving"), "{e}");

        let mut p = Protocol::new(&params(None), catalogue());
        p.receive(&auth(10, b"SCRAM-SHA-256\0\0"));
        assert_eq!(*closed_with(&events(&mut p)), PgError::NoPassword);

        let mut p = Protocol::new(&params(Some("pw")), catalogue());
        p.receive(&auth(10, b"OTHER-MECH\0\0"));
        assert_eq!(closed_with(&events(&mut p)).code(), "auth_unsupported");

        let mut p = Protocol::new(&params(Some("pw")), catalogue());
        p.receive(&auth(10, b"SCRAM-SHA-256\0\0"));
        p.receive(&auth(11, b"r=not-our-nonce,s=c2FsdA==,i=4096"));
        assert_eq!(closed_with(&events(&mut p)).code(), "protocol");
    }

    #[test]
    fn a_fatal_error_ends_the_connection_and_fails_units_in_flight() {
        let mut p = ready_protocol();
        let a = p.send(
            Unit {
                queries: vec![select(1)],
                simple: None,
            },
            Instant::now(),
        );
        p.receive(&error(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        ));
        let got = events(&mut p);
        assert!(
            matches!(&got[0], Event::Unit { id, outcome: Err(PgError::ConnectionLost) } if *id == a)
        );
        let e = closed_with(&got);
        assert_eq!(e.sqlstate(), Some("57P01"));
        assert!(p.is_closed());
        // Anything sent afterwards fails at once, and input is ignored.
        let b = p.send(Unit::default(), Instant::now());
        p.receive(&ready_for_query());
        assert!(matches!(
            &events(&mut p)[..],
            [Event::Unit { id, outcome: Err(PgError::ConnectionLost) }] if *id == b
        ));
    }

    #[test]
    fn garbage_and_out_of_place_messages_end_the_connection() {
        let mut p = ready_protocol();
        p.receive(&msg(b'!', b"whatever"));
        assert!(
            closed_with(&events(&mut p))
                .to_string()
                .contains("unreadable message")
        );

        let mut p = ready_protocol();
        p.receive(&ready_for_query());
        let got = events(&mut p);
        assert!(
            closed_with(&got)
                .to_string()
                .contains("unexpected ReadyForQuery")
        );

        let mut p = Protocol::new(&params(None), catalogue());
        p.receive(&data_row(&[None]));
        assert!(
            closed_with(&events(&mut p))
                .to_string()
                .contains("during authentication")
        );

        let mut p = ready_protocol();
        p.send(
            Unit {
                queries: vec![select(1)],
                simple: None,
            },
            Instant::now(),
        );
        p.receive(&data_row(&[None]));
        assert!(
            closed_with(&events(&mut p))
                .to_string()
                .contains("1 columns where 2")
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut p = ready_protocol();
        let mut header = vec![b'D'];
        header.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        p.receive(&header);
        assert_eq!(closed_with(&events(&mut p)).code(), "protocol");
    }

    #[test]
    fn null_wrong_type_and_bad_index_are_errors_not_panics() {
        let mut p = ready_protocol();
        p.send(
            Unit {
                queries: vec![select(1)],
                simple: None,
            },
            Instant::now(),
        );
        let mut answer = msg(b'2', b"");
        answer.extend(data_row(&[Some(&9i64.to_be_bytes()), None]));
        answer.extend(data_row(&[Some(&[1, 2]), Some(b"x")]));
        answer.extend(command_complete("SELECT 2"));
        answer.extend(ready_for_query());
        p.receive(&answer);
        let Some(Event::Unit {
            outcome: Ok(results),
            ..
        }) = p.poll_event()
        else {
            panic!("no result")
        };
        let row = &results[0].rows[0];
        assert_eq!(row.len(), 2);
        assert_eq!(row.get::<i64>(0), Ok(9));
        assert_eq!(row.get::<Option<String>>(1), Ok(None));
        assert_eq!(row.get::<String>(1).unwrap_err().code(), "decode");
        let wrong = row.get::<String>(0).unwrap_err();
        assert!(wrong.to_string().contains("column 0 is int8"), "{wrong}");
        assert_eq!(row.get::<i32>(0).unwrap_err().code(), "decode");
        assert!(
            row.get::<i64>(2)
                .unwrap_err()
                .to_string()
                .contains("no column 2")
        );
        // A value of the wrong length for its type.
        assert_eq!(
            results[0].rows[1].get::<i64>(0).unwrap_err().code(),
            "decode"
        );
    }

    #[test]
    fn units_that_cannot_be_encoded_fail_at_once_and_send_nothing() {
        let mut p = ready_protocol();
        let now = Instant::now();
        let cases: Vec<Query> = vec![
            Query {
                statement: 9,
                params: vec![],
            },
            Query {
                statement: INSERT,
                params: vec![],
            },
            Query {
                statement: INSERT,
                params: vec![Box::new(5i32)],
            },
        ];
        for query in cases {
            let id = p.send(
                Unit {
                    queries: vec![select(1), query],
                    simple: None,
                },
                now,
            );
            assert!(matches!(
                &events(&mut p)[..],
                [Event::Unit { id: got, outcome: Err(PgError::Encode(_)) }] if *got == id
            ));
        }
        assert!(p.output().is_empty());
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn terminate_says_goodbye_and_fails_what_was_in_flight() {
        let mut p = ready_protocol();
        let a = p.send(Unit::default(), Instant::now());
        p.terminate();
        assert_eq!(tags(p.output()), b"X");
        let got = events(&mut p);
        assert!(
            matches!(&got[0], Event::Unit { id, outcome: Err(PgError::ConnectionLost) } if *id == a)
        );
        assert!(matches!(got[1], Event::Closed(PgError::ConnectionLost)));
    }

    #[test]
    fn a_failed_prepare_names_the_statement() {
        let mut p = Protocol::new(&params(None), catalogue());
        let mut bytes = auth(0, b"");
        bytes.extend(ready_for_query());
        bytes.extend(msg(b'1', b""));
        bytes.extend(msg(b't', &[0, 1, 0, 0, 0, 25]));
        bytes.extend(msg(b'n', b""));
        bytes.extend(error("ERROR", "42P01", "relation \"users\" does not exist"));
        p.receive(&bytes);
        let e = closed_with(&events(&mut p)).clone();
        assert!(
            e.to_string().contains("preparing statement user_by_id"),
            "{e}"
        );
    }

    #[test]
    fn the_answer_to_the_tls_request() {
        assert_eq!(check_tls_answer(b"S"), Ok(()));
        assert_eq!(check_tls_answer(b"N"), Err(PgError::NoTls));
        let injected = check_tls_answer(b"SR\0\0\0\x08\0\0\0\0").unwrap_err();
        assert!(
            injected
                .to_string()
                .contains("plaintext after accepting TLS")
        );
        assert_eq!(check_tls_answer(b"E\0\0").unwrap_err().code(), "protocol");
        assert_eq!(check_tls_answer(b"x").unwrap_err().code(), "protocol");
        assert_eq!(&ssl_request()[..], &[0, 0, 0, 8, 4, 210, 22, 47]);
    }

    #[test]
    fn affected_rows_from_command_tags() {
        assert_eq!(affected_rows("INSERT 0 5"), 5);
        assert_eq!(affected_rows("UPDATE 3"), 3);
        assert_eq!(affected_rows("CREATE TABLE"), 0);
        assert_eq!(affected_rows(""), 0);
    }

    #[test]
    fn a_simple_query_runs_several_statements_and_reads_text_rows() {
        let mut p = ready_protocol();
        let a = p.send(
            Unit::simple("CREATE TABLE t (x int); SELECT 42::text, NULL"),
            Instant::now(),
        );
        let b = p.send(Unit::simple("SELECT broken"), Instant::now());
        let sent = take_output(&mut p);
        assert_eq!(tags(&sent), b"QQ", "simple queries, no Sync");
        assert!(String::from_utf8_lossy(&sent).contains("CREATE TABLE t (x int); SELECT 42"));
        let mut answer = command_complete("CREATE TABLE");
        answer.extend(row_description(&[Type::TEXT, Type::TEXT]));
        answer.extend(data_row(&[Some(b"42"), None]));
        answer.extend(command_complete("SELECT 1"));
        answer.extend(ready_for_query());
        answer.extend(error("ERROR", "42703", "column \"broken\" does not exist"));
        answer.extend(ready_for_query());
        p.receive(&answer);
        let got = events(&mut p);
        let [
            Event::Unit {
                id: first,
                outcome: Ok(results),
            },
            Event::Unit {
                id: second,
                outcome: Err(e),
            },
        ] = &got[..]
        else {
            panic!("{got:?}")
        };
        assert_eq!((*first, *second), (a, b));
        assert_eq!(results.len(), 2, "one result per statement");
        let row = &results[1].rows[0];
        assert_eq!(row.text(0).unwrap(), Some("42"));
        assert_eq!(row.text(1).unwrap(), None);
        assert!(row.get::<String>(0).is_err(), "text rows are not binary");
        assert!(row.text(2).is_err());
        assert_eq!(e.sqlstate(), Some("42703"));
        assert!(
            p.is_ready(),
            "an error in a simple query ends only that query"
        );
    }
}
