//! The statements chatd runs on PostgreSQL, prepared once per connection, and the
//! indexes by which the store names them.
//!
//! A message takes its id from the `counters` row under the row's lock, in the
//! statement that inserts it: the lock is held until the transaction commits, so
//! writers commit one after the other on it and ids follow commit order across every
//! chatd process (docs/STORAGE.md). Every statement that names a user by name compares
//! `lower(username)`, the unique index's expression.

use postgres_types::Type;

use crate::pg::Statement;

pub const USER_BY_ID: usize = 0;
pub const USER_BY_NAME: usize = 1;
pub const CREATE_USER: usize = 2;
pub const SET_PASSWORD: usize = 3;
pub const SET_DISPLAY_NAME: usize = 4;
pub const POST_ROOM: usize = 5;
pub const POST_DIRECT: usize = 6;
pub const SUBSCRIBE: usize = 7;
pub const ROOM_BEFORE: usize = 8;
pub const ROOM_AFTER: usize = 9;
pub const DIRECT_BEFORE: usize = 10;
pub const DIRECT_AFTER: usize = 11;
pub const SUBSCRIPTIONS_OF: usize = 12;
pub const CONVERSATIONS: usize = 13;
pub const ALL_SUBSCRIPTIONS: usize = 14;
pub const POST_ROOMS: usize = 15;

/// The columns of an account, in `User`'s order.
macro_rules! user_columns {
    () => {
        "id, username, display_name, password_hash, password_version, created_at"
    };
}

/// A page of history: `id, kind, room, sender name, recipient name, text, ts`, one row
/// more than the limit (it tells whether more exist). `$bound` is the id the page
/// starts from, exclusive.
macro_rules! history {
    ($filter:literal, $cmp:literal, $order:literal) => {
        concat!(
            "SELECT m.id, m.kind, m.room, s.username, r.username, m.text, m.ts
             FROM messages m JOIN users s ON s.id = m.sender_id
             LEFT JOIN users r ON r.id = m.recipient_id
             WHERE ",
            $filter,
            " AND m.id ",
            $cmp,
            " $2 ORDER BY m.id ",
            $order,
            " LIMIT $3"
        )
    };
}

/// A direct conversation's page, with the other user found by name: no row at all when
/// nobody has the name, one row of NULL message columns when the conversation is
/// empty.
macro_rules! direct_history {
    ($cmp:literal, $order:literal) => {
        concat!(
            "WITH o AS (SELECT id FROM users WHERE lower(username) = lower($4))
             SELECT h.id, h.kind, h.room, h.sender, h.recipient, h.text, h.ts
             FROM o LEFT JOIN LATERAL (",
            history!(
                "m.user_lo = least($1, o.id) AND m.user_hi = greatest($1, o.id)",
                $cmp,
                $order
            ),
            ") AS h (id, kind, room, sender, recipient, text, ts) ON true"
        )
    };
}

pub static CATALOGUE: [Statement; 16] = [
    Statement {
        name: "user_by_id",
        sql: concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
        params: &[Type::INT8],
    },
    Statement {
        name: "user_by_name",
        sql: concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(username) = lower($1)"
        ),
        params: &[Type::TEXT],
    },
    Statement {
        name: "create_user",
        sql: "INSERT INTO users (username, display_name, password_hash, password_version, created_at)
              VALUES ($1, $1, $2, 0, $3)
              ON CONFLICT ((lower(username))) DO NOTHING RETURNING id",
        params: &[Type::TEXT, Type::TEXT, Type::INT8],
    },
    Statement {
        name: "set_password",
        sql: "UPDATE users SET password_hash = $2, password_version = password_version + 1
              WHERE id = $1 RETURNING password_version",
        params: &[Type::INT8, Type::TEXT],
    },
    Statement {
        name: "set_display_name",
        sql: "UPDATE users SET display_name = $2 WHERE id = $1",
        params: &[Type::INT8, Type::TEXT],
    },
    Statement {
        name: "post_room",
        // $2: 0 room, 2 notification.
        sql: "WITH next AS (
                  UPDATE counters SET value = value + 1 WHERE name = 'message' RETURNING value
              )
              INSERT INTO messages (id, kind, room, sender_id, text, ts)
              SELECT next.value, $2, $3, $1, $4, $5 FROM next RETURNING id",
        params: &[Type::INT8, Type::INT2, Type::TEXT, Type::TEXT, Type::INT8],
    },
    Statement {
        name: "post_direct",
        // No row when nobody has the name (the counter is not touched then). Both
        // participants' conversation rows move to this message; one's own is one row.
        sql: "WITH r AS (SELECT id, username FROM users WHERE lower(username) = lower($2)),
              next AS (
                  UPDATE counters SET value = value + 1
                  WHERE name = 'message' AND EXISTS (SELECT 1 FROM r) RETURNING value
              ),
              ins AS (
                  INSERT INTO messages (id, kind, sender_id, recipient_id, user_lo, user_hi, text, ts)
                  SELECT next.value, 1, $1, r.id, least($1, r.id), greatest($1, r.id), $3, $4
                  FROM next, r RETURNING id, recipient_id, ts
              ),
              mine AS (
                  INSERT INTO conversations (user_id, other_id, last_id, ts)
                  SELECT $1, recipient_id, id, ts FROM ins
                  ON CONFLICT (user_id, other_id) DO UPDATE
                  SET last_id = excluded.last_id, ts = excluded.ts
                  WHERE excluded.last_id > conversations.last_id
              ),
              theirs AS (
                  INSERT INTO conversations (user_id, other_id, last_id, ts)
                  SELECT recipient_id, $1, id, ts FROM ins WHERE recipient_id <> $1
                  ON CONFLICT (user_id, other_id) DO UPDATE
                  SET last_id = excluded.last_id, ts = excluded.ts
                  WHERE excluded.last_id > conversations.last_id
              )
              SELECT ins.id, r.id, r.username FROM ins, r",
        params: &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8],
    },
    Statement {
        name: "subscribe",
        // $3: subscribe (true) or unsubscribe; $4: the cap, counted in the transaction.
        // The main query sees the table as it was before the statement, so the state
        // afterwards is: there before and not deleted, or inserted now.
        sql: "WITH t AS (SELECT id, username FROM users WHERE lower(username) = lower($2)),
              ins AS (
                  INSERT INTO subscriptions (subscriber_id, target_id)
                  SELECT $1, t.id FROM t
                  WHERE $3 AND (SELECT count(*) FROM subscriptions WHERE subscriber_id = $1) < $4
                  ON CONFLICT DO NOTHING RETURNING target_id
              ),
              del AS (
                  DELETE FROM subscriptions s USING t
                  WHERE NOT $3 AND s.subscriber_id = $1 AND s.target_id = t.id
                  RETURNING s.target_id
              )
              SELECT t.id, t.username,
                     (EXISTS (SELECT 1 FROM subscriptions WHERE subscriber_id = $1 AND target_id = t.id)
                      AND NOT EXISTS (SELECT 1 FROM del))
                     OR EXISTS (SELECT 1 FROM ins)
              FROM t",
        params: &[Type::INT8, Type::TEXT, Type::BOOL, Type::INT8],
    },
    Statement {
        name: "room_before",
        sql: history!("m.room = $1", "<", "DESC"),
        params: &[Type::TEXT, Type::INT8, Type::INT8],
    },
    Statement {
        name: "room_after",
        sql: history!("m.room = $1", ">", "ASC"),
        params: &[Type::TEXT, Type::INT8, Type::INT8],
    },
    Statement {
        name: "direct_before",
        sql: direct_history!("<", "DESC"),
        params: &[Type::INT8, Type::INT8, Type::INT8, Type::TEXT],
    },
    Statement {
        name: "direct_after",
        sql: direct_history!(">", "ASC"),
        params: &[Type::INT8, Type::INT8, Type::INT8, Type::TEXT],
    },
    Statement {
        name: "subscriptions_of",
        // COLLATE "C": byte order, as SQLite and the chat sort user lists.
        sql: "SELECT u.username FROM subscriptions s JOIN users u ON u.id = s.target_id
              WHERE s.subscriber_id = $1 ORDER BY u.username COLLATE \"C\"",
        params: &[Type::INT8],
    },
    Statement {
        name: "conversations",
        sql: "SELECT u.username, c.last_id, c.ts FROM conversations c
              JOIN users u ON u.id = c.other_id
              WHERE c.user_id = $1 ORDER BY c.last_id DESC LIMIT $2",
        params: &[Type::INT8, Type::INT8],
    },
    Statement {
        name: "all_subscriptions",
        sql: "SELECT subscriber_id, target_id FROM subscriptions",
        params: &[],
    },
    Statement {
        name: "post_rooms",
        // Several room posts (and notifications) in one statement: one counter update
        // by their number, the n-th post taking the n-th id of the range, so ids follow
        // the order of the arrays (request order) and, under the row's lock, commit
        // order. Arrays, each one element per post: $1 senders, $2 kinds (0 room, 2
        // notification), $3 rooms, $4 texts, $5 times. Answers the last id and the rows
        // inserted (a data-modifying WITH runs to completion whatever reads it).
        sql: "WITH next AS (
                  UPDATE counters SET value = value + cardinality($1::int8[])
                  WHERE name = 'message' RETURNING value
              ),
              ins AS (
                  INSERT INTO messages (id, kind, room, sender_id, text, ts)
                  SELECT next.value - cardinality($1::int8[]) + p.n, p.kind, p.room,
                         p.sender_id, p.text, p.ts
                  FROM next, unnest($1::int8[], $2::int2[], $3::text[], $4::text[], $5::int8[])
                       WITH ORDINALITY AS p (sender_id, kind, room, text, ts, n)
                  RETURNING 1
              )
              SELECT next.value, (SELECT count(*) FROM ins) FROM next",
        params: &[
            Type::INT8_ARRAY,
            Type::INT2_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT8_ARRAY,
        ],
    },
];
