//! Backoffice users, their one-time links, sessions and failed-login
//! counters (`migrations/0019_users.sql`). Users are read and changed in
//! the caller's scoped transaction (RLS: a tenant scope sees its own
//! tenant's users); sign-in and redeeming a link run in platform scope
//! because the tenant is not known until the user is found. `sessions`,
//! `user_tokens` and `login_failures` have no RLS: they are written only
//! for a user the same transaction has read through `users` (or, at
//! sign-in, found by its email).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult, SqlErr};
use uuid::Uuid;

use super::statement;
use crate::domain::user::{Role, UserStatus};

#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub tenant_id: Option<Uuid>,
    pub status: UserStatus,
    pub password_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("tenant_id", &self.tenant_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

const USER_COLUMNS: &str = "u.id, u.email, u.role, u.tenant_id, u.status, u.password_hash, \
     u.created_at, u.updated_at, u.last_login_at";

fn user(row: &QueryResult) -> Result<UserRow, DbErr> {
    let role: String = row.try_get("", "role")?;
    let status: String = row.try_get("", "status")?;
    Ok(UserRow {
        id: row.try_get("", "id")?,
        email: row.try_get("", "email")?,
        role: Role::parse(&role).ok_or_else(|| DbErr::Custom(format!("unknown role {role:?}")))?,
        tenant_id: row.try_get("", "tenant_id")?,
        status: UserStatus::parse(&status)
            .ok_or_else(|| DbErr::Custom(format!("unknown user status {status:?}")))?,
        password_hash: row.try_get("", "password_hash")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        last_login_at: row.try_get("", "last_login_at")?,
    })
}

/// Whether an insert failed because the email is taken.
pub fn is_email_taken(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(m)) if m.contains("users_email"))
}

/// Whether an insert failed because the tenant does not exist.
pub fn is_unknown_tenant(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    )
}

pub async fn insert(
    tx: &DatabaseTransaction,
    email: &str,
    role: Role,
    tenant_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<UserRow, DbErr> {
    let row = tx
        .query_one_raw(statement(
            format!(
                "INSERT INTO users AS u (id, email, role, tenant_id, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'invited', $5, $5) RETURNING {USER_COLUMNS}"
            ),
            [
                Uuid::now_v7().into(),
                email.into(),
                role.as_str().into(),
                tenant_id.into(),
                now.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("INSERT … RETURNING returned no row".into()))?;
    user(&row)
}

pub async fn get(tx: &DatabaseTransaction, id: Uuid) -> Result<Option<UserRow>, DbErr> {
    tx.query_one_raw(statement(
        format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"),
        [id.into()],
    ))
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

pub async fn find_by_email(
    tx: &DatabaseTransaction,
    email: &str,
) -> Result<Option<UserRow>, DbErr> {
    tx.query_one_raw(statement(
        format!("SELECT {USER_COLUMNS} FROM users u WHERE u.email = $1"),
        [email.into()],
    ))
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

/// Up to `limit` users in id (creation) order after `after`: one
/// tenant's, only platform users, or all the scope sees.
pub async fn page(
    tx: &DatabaseTransaction,
    tenant_id: Option<Uuid>,
    platform_only: bool,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<UserRow>, DbErr> {
    let rows = tx
        .query_all_raw(statement(
            format!(
                "SELECT {USER_COLUMNS} FROM users u \
                 WHERE ($1::uuid IS NULL OR u.tenant_id = $1) AND ($2::uuid IS NULL OR u.id > $2) \
                   AND (NOT $4 OR u.tenant_id IS NULL) \
                 ORDER BY u.id LIMIT $3"
            ),
            [
                tenant_id.into(),
                after.into(),
                (limit as i64).into(),
                platform_only.into(),
            ],
        ))
        .await?;
    rows.iter().map(user).collect()
}

/// Changes role and/or status; the row after the change.
pub async fn update(
    tx: &DatabaseTransaction,
    id: Uuid,
    role: Option<Role>,
    status: Option<UserStatus>,
    now: DateTime<Utc>,
) -> Result<Option<UserRow>, DbErr> {
    tx.query_one_raw(statement(
        format!(
            "UPDATE users u SET role = coalesce($2, u.role), status = coalesce($3, u.status), \
                 updated_at = $4 WHERE u.id = $1 RETURNING {USER_COLUMNS}"
        ),
        [
            id.into(),
            role.map(Role::as_str).into(),
            status.map(UserStatus::as_str).into(),
            now.into(),
        ],
    ))
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

/// Sets the password hash; an invited user becomes active.
pub async fn set_password(
    tx: &DatabaseTransaction,
    id: Uuid,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<UserRow>, DbErr> {
    tx.query_one_raw(statement(
        format!(
            "UPDATE users u SET password_hash = $2, updated_at = $3, \
                 status = CASE WHEN u.status = 'invited' THEN 'active' ELSE u.status END \
             WHERE u.id = $1 RETURNING {USER_COLUMNS}"
        ),
        [id.into(), hash.into(), now.into()],
    ))
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

pub async fn delete(tx: &DatabaseTransaction, id: Uuid) -> Result<Option<UserRow>, DbErr> {
    tx.query_one_raw(statement(
        format!("DELETE FROM users u WHERE u.id = $1 RETURNING {USER_COLUMNS}"),
        [id.into()],
    ))
    .await?
    .as_ref()
    .map(user)
    .transpose()
}

pub async fn record_login(
    tx: &DatabaseTransaction,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE users SET last_login_at = $2 WHERE id = $1",
        [id.into(), now.into()],
    ))
    .await?;
    Ok(())
}

/// Stores a one-time link's digest, replacing the user's earlier link of
/// the same purpose.
pub async fn put_token(
    tx: &DatabaseTransaction,
    digest: Vec<u8>,
    user_id: Uuid,
    purpose: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO user_tokens (digest, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, purpose) DO UPDATE \
             SET digest = excluded.digest, expires_at = excluded.expires_at, created_at = now()",
        [
            digest.into(),
            user_id.into(),
            purpose.into(),
            expires_at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Uses up a link: deletes it and returns its user and expiry (`None`: no
/// such link, or it was used).
pub async fn take_token(
    tx: &DatabaseTransaction,
    digest: Vec<u8>,
    purpose: &str,
) -> Result<Option<(Uuid, DateTime<Utc>)>, DbErr> {
    let row = tx
        .query_one_raw(statement(
            "DELETE FROM user_tokens WHERE digest = $1 AND purpose = $2 \
             RETURNING user_id, expires_at",
            [digest.into(), purpose.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "user_id")?, r.try_get("", "expires_at")?)))
        .transpose()
}

/// A live session and its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user: UserRow,
}

pub async fn create_session(
    tx: &DatabaseTransaction,
    digest: Vec<u8>,
    user_id: Uuid,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    // A sign-in is a good moment to forget this user's ended sessions.
    tx.execute_raw(statement(
        "DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2",
        [user_id.into(), now.into()],
    ))
    .await?;
    tx.execute_raw(statement(
        "INSERT INTO sessions (digest, id, user_id, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $4, $5)",
        [
            digest.into(),
            id.into(),
            user_id.into(),
            now.into(),
            expires_at.into(),
        ],
    ))
    .await?;
    Ok(id)
}

pub async fn find_session(
    tx: &DatabaseTransaction,
    digest: Vec<u8>,
) -> Result<Option<SessionRow>, DbErr> {
    let row = tx
        .query_one_raw(statement(
            format!(
                "SELECT s.id AS session_id, s.last_seen_at, s.expires_at, {USER_COLUMNS} \
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.digest = $1"
            ),
            [digest.into()],
        ))
        .await?;
    row.map(|r| {
        Ok(SessionRow {
            id: r.try_get("", "session_id")?,
            last_seen_at: r.try_get("", "last_seen_at")?,
            expires_at: r.try_get("", "expires_at")?,
            user: user(&r)?,
        })
    })
    .transpose()
}

pub async fn delete_session(tx: &DatabaseTransaction, id: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(statement("DELETE FROM sessions WHERE id = $1", [id.into()]))
        .await?;
    Ok(())
}

/// Ends every session of a user but `keep`; the ended sessions' ids.
pub async fn end_sessions(
    tx: &DatabaseTransaction,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> Result<Vec<Uuid>, DbErr> {
    let rows = tx
        .query_all_raw(statement(
            "DELETE FROM sessions WHERE user_id = $1 AND ($2::uuid IS NULL OR id <> $2) RETURNING id",
            [user_id.into(), keep.into()],
        ))
        .await?;
    rows.iter().map(|r| r.try_get("", "id")).collect()
}

/// Writes recorded last-seen times (a time only moves forward).
pub async fn touch_sessions(
    db: &impl ConnectionTrait,
    seen: &[(Uuid, DateTime<Utc>)],
) -> Result<(), DbErr> {
    if seen.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = seen.iter().map(|(id, _)| *id).collect();
    let times: Vec<DateTime<Utc>> = seen.iter().map(|(_, at)| *at).collect();
    db.execute_raw(statement(
        "UPDATE sessions s SET last_seen_at = greatest(s.last_seen_at, t.at) \
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS t(id, at) WHERE s.id = t.id",
        [ids.into(), times.into()],
    ))
    .await?;
    Ok(())
}

/// Forgets sessions that expired before `expired_before` or were last
/// seen before `seen_before`; how many.
pub async fn purge_sessions(
    db: &impl ConnectionTrait,
    expired_before: DateTime<Utc>,
    seen_before: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let done = db
        .execute_raw(statement(
            "DELETE FROM sessions WHERE expires_at < $1 OR last_seen_at < $2",
            [expired_before.into(), seen_before.into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

/// Forgets failed-login counters whose window started before
/// `window_before` and that are not locked at `now`.
pub async fn purge_failures(
    db: &impl ConnectionTrait,
    window_before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let done = db
        .execute_raw(statement(
            "DELETE FROM login_failures WHERE window_started_at < $1 \
               AND (locked_until IS NULL OR locked_until < $2)",
            [window_before.into(), now.into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

/// Serialises sign-in attempts at one subject until the transaction ends.
pub async fn lock_subject(tx: &DatabaseTransaction, subject: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7411))",
        [subject.into()],
    ))
    .await?;
    Ok(())
}

/// Forgets a user's outstanding invite and reset links.
pub async fn drop_tokens(tx: &DatabaseTransaction, user_id: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "DELETE FROM user_tokens WHERE user_id = $1",
        [user_id.into()],
    ))
    .await?;
    Ok(())
}

/// The latest time any of `subjects` is locked until, if one is locked at
/// `now`.
pub async fn locked_until(
    tx: &DatabaseTransaction,
    subjects: &[String],
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    let row = tx
        .query_one_raw(statement(
            "SELECT max(locked_until) AS until FROM login_failures \
             WHERE subject = ANY($1) AND locked_until > $2",
            [subjects.to_vec().into(), now.into()],
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get("", "until")?,
        None => None,
    })
}

/// Counts one failed sign-in for `subject` in a window of `window`
/// starting at its first failure; at `limit` failures the subject is
/// locked until `now + lockout`.
pub async fn record_failure(
    tx: &DatabaseTransaction,
    subject: &str,
    limit: i32,
    now: DateTime<Utc>,
    window: chrono::Duration,
    lockout: chrono::Duration,
) -> Result<(), DbErr> {
    // $4: a window that started at or before this is over; $5: the end of
    // a lockout starting now.
    tx.execute_raw(statement(
        "INSERT INTO login_failures AS f (subject, failures, window_started_at, locked_until) \
         VALUES ($1, 1, $2, CASE WHEN $3 <= 1 THEN $5 END) \
         ON CONFLICT (subject) DO UPDATE SET \
             failures = CASE WHEN f.window_started_at <= $4 THEN 1 ELSE f.failures + 1 END, \
             window_started_at = CASE WHEN f.window_started_at <= $4 THEN $2 \
                                      ELSE f.window_started_at END, \
             locked_until = CASE \
                 WHEN (CASE WHEN f.window_started_at <= $4 THEN 1 ELSE f.failures + 1 END) >= $3 \
                 THEN $5 ELSE f.locked_until END",
        [
            subject.into(),
            now.into(),
            limit.into(),
            (now - window).into(),
            (now + lockout).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Forgets the failures of `subject` (after a successful sign-in).
pub async fn clear_failures(tx: &DatabaseTransaction, subject: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "DELETE FROM login_failures WHERE subject = $1",
        [subject.into()],
    ))
    .await?;
    Ok(())
}
