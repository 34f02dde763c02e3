//! Operations into queries of the catalogue, and their rows into answers: the whole
//! translation between chatd's requests and PostgreSQL's, without a socket.
//!
//! A unit's consecutive room posts (a busy turn's writes are mostly those) become one
//! `post_rooms` query: one counter update and one insert for all of them instead of one
//! of each per message, which is most of what a message costs PostgreSQL.

use std::ops::Range;

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

/// A room post or a notification: what `post_rooms` stores.
fn room_post(op: &Op) -> Option<&crate::store::NewMessage> {
    match op {
        Op::Post(message) if !matches!(message.kind, NewKind::Direct { .. }) => Some(message),
        _ => None,
    }
}

/// The operations each query of a unit carries out, as ranges of `ops`: a run of two
/// or more consecutive room posts is one range, every other operation one of its own.
/// Runs are never reordered around other operations, so every message of the unit
/// takes its id in request order.
fn groups(ops: &[&Op]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let mut end = start + 1;
        if room_post(ops[start]).is_some() {
            while end < ops.len() && room_post(ops[end]).is_some() {
                end += 1;
            }
        }
        if end - start >= 2 {
            groups.push(start..end);
        } else {
            groups.extend((start..end).map(|i| i..i + 1));
        }
        start = end;
    }
    groups
}

/// The `post_rooms` query for several room posts.
fn post_rooms(posts: &[&Op]) -> Query {
    let messages: Vec<_> = posts.iter().filter_map(|op| room_post(op)).collect();
    let kind = |m: &crate::store::NewMessage| match &m.kind {
        NewKind::Room(_) => KIND_ROOM,
        _ => KIND_NOTIFICATION,
    };
    let room = |m: &crate::store::NewMessage| match &m.kind {
        NewKind::Room(room) => Some(room.clone()),
        _ => None,
    };
    query(
        sql::POST_ROOMS,
        vec![
            param(messages.iter().map(|m| m.from).collect::<Vec<i64>>()),
            param(messages.iter().map(|m| kind(m)).collect::<Vec<i16>>()),
            param(
                messages
                    .iter()
                    .map(|m| room(m))
                    .collect::<Vec<Option<String>>>(),
            ),
            param(
                messages
                    .iter()
                    .map(|m| m.text.clone())
                    .collect::<Vec<String>>(),
            ),
            param(messages.iter().map(|m| m.ts).collect::<Vec<i64>>()),
        ],
    )
}

/// The queries that carry out a unit's operations, in order (see [`groups`]).
pub fn unit_queries(ops: &[&Op]) -> Vec<Query> {
    groups(ops)
        .into_iter()
        .map(|range| {
            if range.len() == 1 {
                query_for(ops[range.start])
            } else {
                post_rooms(&ops[range])
            }
        })
        .collect()
}

/// The answer to each operation of a unit, from the rows of each of its queries
/// ([`unit_queries`]); None for operations whose query has no rows (the unit ended
/// early).
pub fn unit_answers(ops: &[&Op], results: Vec<Rows>) -> Vec<Option<Result<Answer, PgError>>> {
    let mut answers = Vec::with_capacity(ops.len());
    let mut results = results.into_iter();
    for range in groups(ops) {
        let rows = results.next();
        if range.len() == 1 {
            answers.push(rows.map(|rows| answer(ops[range.start], rows)));
            continue;
        }
        let count = range.len();
        match rows.map(|rows| posted_ids(&rows, count)) {
            None => answers.extend((0..count).map(|_| None)),
            Some(Err(e)) => answers.extend((0..count).map(|_| Some(Err(e.clone())))),
            Some(Ok(first)) => answers.extend((0..count).map(|i| {
                Some(Ok(Answer::Posted {
                    id: first + i as i64,
                    to: None,
                }))
            })),
        }
    }
    answers
}

/// The first id of `count` room posts stored by `post_rooms`, from its one row (the
/// last id, the rows inserted).
fn posted_ids(rows: &Rows, count: usize) -> Result<i64, PgError> {
    let row = rows
        .rows
        .first()
        .ok_or_else(|| PgError::Decode("no ids for stored messages".into()))?;
    let last: i64 = row.get(0)?;
    let inserted: i64 = row.get(1)?;
    if usize::try_from(inserted).ok() != Some(count) {
        return Err(PgError::Decode(format!(
            "{inserted} of {count} messages stored"
        )));
    }
    Ok(last - int(count) + 1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;

    fn post(kind: NewKind, text: &str) -> Op {
        Op::Post(NewMessage {
            from: 7,
            kind,
            text: text.to_string(),
            ts: 1_700_000_000_000,
        })
    }

    fn room(text: &str) -> Op {
        post(NewKind::Room("dev".into()), text)
    }

    #[test]
    fn consecutive_room_posts_are_one_query_in_request_order() {
        let unit = [
            room("a"),
            room("b"),
            post(NewKind::Direct { to: "bob".into() }, "c"),
            room("d"),
            post(NewKind::Notification, "e"),
            room("f"),
            Op::UserById(1),
            room("g"),
        ];
        let ops: Vec<&Op> = unit.iter().collect();
        assert_eq!(groups(&ops), vec![0..2, 2..3, 3..6, 6..7, 7..8]);
        let queries = unit_queries(&ops);
        let statements: Vec<usize> = queries.iter().map(|q| q.statement).collect();
        assert_eq!(
            statements,
            vec![
                sql::POST_ROOMS,
                sql::POST_DIRECT,
                sql::POST_ROOMS,
                sql::USER_BY_ID,
                sql::POST_ROOM
            ],
            "a direct message between room posts keeps its place, and so its id's"
        );
        assert_eq!(
            queries[2].params.len(),
            sql::CATALOGUE[sql::POST_ROOMS].params.len()
        );
        let single = [room("only")];
        let ops: Vec<&Op> = single.iter().collect();
        assert_eq!(unit_queries(&ops)[0].statement, sql::POST_ROOM);
        assert!(unit_queries(&[]).is_empty());
    }

    #[test]
    fn a_unit_that_ended_early_answers_nothing_for_its_batch() {
        let unit = [room("a"), room("b"), room("c")];
        let ops: Vec<&Op> = unit.iter().collect();
        let answers = unit_answers(&ops, Vec::new());
        assert_eq!(answers.len(), 3, "one per operation");
        assert!(answers.iter().all(Option::is_none));
        let answers = unit_answers(&ops, vec![Rows::default()]);
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Some(Err(PgError::Decode(_))))),
            "a batch without its row fails every post of it"
        );
    }
}
