//! Operations into queries of the catalogue, and their rows into answers: the whole
//! translation between chatd's requests and PostgreSQL's, without a socket.

use crate::chat::UserRef;
use crate::chat::protocol::{Conversation, Item, ItemKind, Page};
use crate::pg::{Param, PgError, Query, Row, Rows};
use crate::store::{Answer, HistoryScope, NewKind, Op, User};

use super::sql;

const KIND_ROOM: i16 = 0;
const KIND_DIRECT: i16 = 1;
const KIND_NOTIFICATION: i16 = 2;

fn query(statement: usize, params: Vec<Param>) -> Query {
    Query { statement, params }
}

/// A parameter.
fn param<T: postgres_types::ToSql + Send + Sync + 'static>(value: T) -> Param {
    Box::new(value)
}

fn int(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The page's bound and the statement for its direction: newest first below a bound
/// (the latest page has none), or oldest first above one.
fn page(page: Page, before: usize, after: usize) -> (usize, i64) {
    match page {
        Page::Latest => (before, i64::MAX),
        Page::Before(id) => (before, id),
        Page::After(id) => (after, id),
    }
}

/// The query that carries out `op`.
pub fn query_for(op: &Op) -> Query {
    match op {
        Op::UserById(id) => query(sql::USER_BY_ID, vec![param(*id)]),
        Op::UserByName(name) => query(sql::USER_BY_NAME, vec![param(name.clone())]),
        Op::History {
            scope,
            page: p,
            limit,
        } => {
            // One row more than asked tells whether another page exists.
            let limit = int(*limit).saturating_add(1);
            match scope {
                HistoryScope::Room(room) => {
                    let (statement, bound) = page(*p, sql::ROOM_BEFORE, sql::ROOM_AFTER);
                    query(
                        statement,
                        vec![param(room.clone()), param(bound), param(limit)],
                    )
                }
                HistoryScope::Direct { user, with } => {
                    let (statement, bound) = page(*p, sql::DIRECT_BEFORE, sql::DIRECT_AFTER);
                    query(
                        statement,
                        vec![
                            param(*user),
                            param(bound),
                            param(limit),
                            param(with.clone()),
                        ],
                    )
                }
            }
        }
        Op::SubscriptionsOf(user) => query(sql::SUBSCRIPTIONS_OF, vec![param(*user)]),
        Op::Conversations { user, limit } => {
            query(sql::CONVERSATIONS, vec![param(*user), param(int(*limit))])
        }
        Op::CreateUser {
            username,
            password_hash,
            created_at,
        } => query(
            sql::CREATE_USER,
            vec![
                param(username.clone()),
                param(password_hash.clone()),
                param(*created_at),
            ],
        ),
        Op::SetPassword {
            user,
            password_hash,
        } => query(
            sql::SET_PASSWORD,
            vec![param(*user), param(password_hash.clone())],
        ),
        Op::SetDisplayName { user, display_name } => query(
            sql::SET_DISPLAY_NAME,
            vec![param(*user), param(display_name.clone())],
        ),
        Op::Post(message) => match &message.kind {
            NewKind::Direct { to } => query(
                sql::POST_DIRECT,
                vec![
                    param(message.from),
                    param(to.clone()),
                    param(message.text.clone()),
                    param(message.ts),
                ],
            ),
            kind => {
                let (code, room) = match kind {
                    NewKind::Room(room) => (KIND_ROOM, Some(room.clone())),
                    _ => (KIND_NOTIFICATION, None),
                };
                query(
                    sql::POST_ROOM,
                    vec![
                        param(message.from),
                        param(code),
                        param(room),
                        param(message.text.clone()),
                        param(message.ts),
                    ],
                )
            }
        },
        Op::Subscribe {
            subscriber,
            target,
            subscribed,
            max,
        } => query(
            sql::SUBSCRIBE,
            vec![
                param(*subscriber),
                param(target.clone()),
                param(*subscribed),
                param(int(*max)),
            ],
        ),
    }
}

/// For logs.
pub fn name(op: &Op) -> &'static str {
    match op {
        Op::UserById(_) => "user_by_id",
        Op::UserByName(_) => "user_by_name",
        Op::History { .. } => "history",
        Op::SubscriptionsOf(_) => "subscriptions_of",
        Op::Conversations { .. } => "conversations",
        Op::CreateUser { .. } => "create_user",
        Op::SetPassword { .. } => "set_password",
        Op::SetDisplayName { .. } => "set_display_name",
        Op::Post(_) => "post",
        Op::Subscribe { .. } => "subscribe",
    }
}

fn user(row: &Row) -> Result<User, PgError> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        password_hash: row.get(3)?,
        password_version: row.get(4)?,
        created_at: row.get(5)?,
    })
}

fn item(row: &Row) -> Result<Item, PgError> {
    let kind: i16 = row.get(1)?;
    let kind = match kind {
        KIND_ROOM => ItemKind::Room(row.get::<Option<String>>(2)?.unwrap_or_default()),
        KIND_DIRECT => ItemKind::Direct {
            to: row.get::<Option<String>>(4)?.unwrap_or_default(),
        },
        _ => ItemKind::Notification,
    };
    Ok(Item {
        id: row.get(0)?,
        kind,
        from: row.get(3)?,
        text: row.get(5)?,
        ts: row.get(6)?,
    })
}

/// The answer `rows` give to `op`.
pub fn answer(op: &Op, rows: Rows) -> Result<Answer, PgError> {
    let first = rows.rows.first();
    Ok(match op {
        Op::UserById(_) | Op::UserByName(_) => Answer::User(first.map(user).transpose()?),
        Op::CreateUser {
            username,
            password_hash,
            created_at,
        } => Answer::Created(
            first
                .map(|row| {
                    Ok::<_, PgError>(User {
                        id: row.get(0)?,
                        username: username.clone(),
                        display_name: username.clone(),
                        password_hash: password_hash.clone(),
                        password_version: 0,
                        created_at: *created_at,
                    })
                })
                .transpose()?,
        ),
        Op::SetPassword { .. } => Answer::PasswordVersion(first.map(|row| row.get(0)).transpose()?),
        Op::SetDisplayName { .. } => Answer::Done,
        Op::Post(message) => match (&message.kind, first) {
            (NewKind::Direct { .. }, None) => Answer::NoSuchUser,
            (NewKind::Direct { .. }, Some(row)) => Answer::Posted {
                id: row.get(0)?,
                to: Some(UserRef {
                    id: row.get(1)?,
                    username: row.get(2)?,
                }),
            },
            (_, Some(row)) => Answer::Posted {
                id: row.get(0)?,
                to: None,
            },
            (_, None) => return Err(PgError::Decode("no id for a stored message".into())),
        },
        Op::Subscribe { .. } => match first {
            None => Answer::NoSuchUser,
            Some(row) => Answer::Subscription {
                target: UserRef {
                    id: row.get(0)?,
                    username: row.get(1)?,
                },
                subscribed: row.get(2)?,
            },
        },
        Op::History { scope, page, limit } => {
            let direct = matches!(scope, HistoryScope::Direct { .. });
            if direct && rows.rows.is_empty() {
                return Ok(Answer::NoSuchUser);
            }
            let mut items = Vec::with_capacity(rows.rows.len());
            for row in &rows.rows {
                // The one row of an empty direct conversation has no message in it.
                if direct && row.get::<Option<i64>>(0)?.is_none() {
                    continue;
                }
                items.push(item(row)?);
            }
            let more = items.len() > *limit;
            items.truncate(*limit);
            if !matches!(page, Page::After(_)) {
                items.reverse();
            }
            Answer::History { items, more }
        }
        Op::SubscriptionsOf(_) => Answer::Usernames(
            rows.rows
                .iter()
                .map(|row| row.get(0))
                .collect::<Result<_, _>>()?,
        ),
        Op::Conversations { .. } => Answer::Conversations(
            rows.rows
                .iter()
                .map(|row| {
                    Ok(Conversation {
                        with: row.get(0)?,
                        last_id: row.get(1)?,
                        ts: row.get(2)?,
                    })
                })
                .collect::<Result<_, PgError>>()?,
        ),
    })
}
