//! Groups, members with roles and mutes, and join requests: rows in and out.
//! Permission rules live in `crate::social::perms`, not here.
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql;
use super::{Store, StoreError};

/// A group as stored, with its current member count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub join_policy: i64,
    pub announcement: String,
    pub muted_all: bool,
    pub dismissed: bool,
    pub created_at_ms: i64,
    pub member_count: i64,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: i64,
    pub username: String,
    pub role: i64,
    pub muted_until_ms: i64,
    pub joined_at_ms: i64,
}

/// A pending request to join a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub user_id: i64,
    pub username: String,
    pub note: String,
    pub created_at_ms: i64,
}

const GROUP_COLS: &str = "g.id, g.name, g.owner_id, g.join_policy, g.announcement, g.muted_all, \
     g.dismissed, g.created_at_ms, (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id)";

fn group_from_row(r: &AnyRow) -> Result<GroupRecord, sqlx::Error> {
    Ok(GroupRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        owner_id: r.try_get(2)?,
        join_policy: r.try_get(3)?,
        announcement: r.try_get(4)?,
        muted_all: r.try_get::<i64, _>(5)? != 0,
        dismissed: r.try_get::<i64, _>(6)? != 0,
        created_at_ms: r.try_get(7)?,
        member_count: r.try_get(8)?,
    })
}

fn member_from_row(r: &AnyRow) -> Result<MemberRecord, sqlx::Error> {
    Ok(MemberRecord {
        user_id: r.try_get(0)?,
        username: r.try_get(1)?,
        role: r.try_get(2)?,
        muted_until_ms: r.try_get(3)?,
        joined_at_ms: r.try_get(4)?,
    })
}

impl Store {
    /// Creates a group owned by `owner` with `members` (roles: owner 2, others 0).
    pub async fn create_group(
        &self,
        name: &str,
        owner: i64,
        join_policy: i64,
        members: &[i64],
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO chat_groups (name, owner_id, join_policy, created_at_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(owner)
        .bind(join_policy)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        sqlx::query("INSERT INTO group_seq (group_id, seq) VALUES ($1, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut rows: Vec<(i64, i64)> = vec![(owner, 2)];
        rows.extend(members.iter().filter(|m| **m != owner).map(|m| (*m, 0)));
        rows.sort_unstable();
        rows.dedup_by_key(|r| r.0);
        insert_members(&mut tx, id, &rows, now_ms).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn group(&self, id: i64) -> Result<Option<GroupRecord>, StoreError> {
        let q = format!("SELECT {GROUP_COLS} FROM chat_groups g WHERE g.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(group_from_row).transpose()?)
    }

    /// The groups `user` belongs to, with the user's role in each.
    pub async fn groups_of(&self, user: i64) -> Result<Vec<(GroupRecord, i64)>, StoreError> {
        let q = format!(
            "SELECT {GROUP_COLS}, m.role FROM chat_groups g JOIN group_members m ON m.group_id = g.id \
             WHERE m.user_id = $1 ORDER BY g.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((group_from_row(r)?, r.try_get::<i64, _>(9)?)))
            .collect()
    }

    pub async fn member(&self, group: i64, user: i64) -> Result<Option<MemberRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT m.user_id, u.username, m.role, m.muted_until_ms, m.joined_at_ms FROM group_members m \
             JOIN users u ON u.id = m.user_id WHERE m.group_id = $1 AND m.user_id = $2",
        )
        .bind(group)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(member_from_row).transpose()?)
    }

    pub async fn members(&self, group: i64) -> Result<Vec<MemberRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, m.role, m.muted_until_ms, m.joined_at_ms FROM group_members m \
             JOIN users u ON u.id = m.user_id WHERE m.group_id = $1 ORDER BY m.user_id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(member_from_row).collect::<Result<_, _>>()?)
    }

    /// Member user ids, ascending.
    pub async fn member_ids(&self, group: i64) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id")
                .bind(group)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)?)).collect()
    }

    /// Adds members with role 0; returns how many were not members before.
    pub async fn add_members(
        &self,
        group: i64,
        users: &[i64],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        if users.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let rows: Vec<(i64, i64)> = users.iter().map(|u| (*u, 0)).collect();
        let n = insert_members(&mut tx, group, &rows, now_ms).await?;
        for chunk in users.chunks(sql::rows_per_statement(&tx, 1)) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM group_join_requests WHERE group_id = $1 AND user_id IN ({})",
                sql::list(chunk.len(), 2)
            )))
            .bind(group);
            for u in chunk {
                q = q.bind(*u);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    pub async fn remove_member(&self, group: i64, user: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(group)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_role(&self, group: i64, user: i64, role: i64) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE group_members SET role = $1 WHERE group_id = $2 AND user_id = $3")
                .bind(role)
                .bind(group)
                .bind(user)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_muted_until(
        &self,
        group: i64,
        user: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE group_members SET muted_until_ms = $1 WHERE group_id = $2 AND user_id = $3",
        )
        .bind(until_ms)
        .bind(group)
        .bind(user)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_muted_all(&self, group: i64, muted: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE chat_groups SET muted_all = $1 WHERE id = $2")
            .bind(i64::from(muted))
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_announcement(&self, group: i64, text: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE chat_groups SET announcement = $1 WHERE id = $2")
            .bind(text)
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes `to` the owner; the old owner becomes an admin. One transaction.
    pub async fn transfer_group(&self, group: i64, from: i64, to: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE chat_groups SET owner_id = $1 WHERE id = $2")
            .bind(to)
            .bind(group)
            .execute(&mut *tx)
            .await?;
        for (user, role) in [(from, 1i64), (to, 2)] {
            sqlx::query("UPDATE group_members SET role = $1 WHERE group_id = $2 AND user_id = $3")
                .bind(role)
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a group dismissed and removes every member and join request.
    pub async fn dismiss_group(&self, group: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE chat_groups SET dismissed = 1 WHERE id = $1")
            .bind(group)
            .execute(&mut *tx)
            .await?;
        for table in ["group_members", "group_join_requests"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE group_id = $1"
            )))
            .bind(group)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_join_request(
        &self,
        group: i64,
        user: i64,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO group_join_requests (group_id, user_id, note, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_id, user_id) DO UPDATE SET note = excluded.note",
        )
        .bind(group)
        .bind(user)
        .bind(note)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn join_requests(&self, group: i64) -> Result<Vec<JoinRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.user_id, u.username, r.note, r.created_at_ms FROM group_join_requests r \
             JOIN users u ON u.id = r.user_id WHERE r.group_id = $1 ORDER BY r.created_at_ms, r.user_id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JoinRequest {
                    user_id: r.try_get(0)?,
                    username: r.try_get(1)?,
                    note: r.try_get(2)?,
                    created_at_ms: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Removes a join request; false when there was none.
    pub async fn take_join_request(&self, group: i64, user: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM group_join_requests WHERE group_id = $1 AND user_id = $2")
            .bind(group)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

async fn insert_members(
    tx: &mut sqlx::AnyConnection,
    group: i64,
    rows: &[(i64, i64)],
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut added = 0;
    for chunk in rows.chunks(sql::rows_per_statement(tx, 5)) {
        let q = format!(
            "INSERT INTO group_members (group_id, user_id, role, muted_until_ms, joined_at_ms) VALUES {} \
             ON CONFLICT (group_id, user_id) DO NOTHING",
            sql::values(chunk.len(), 5)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q));
        for (user, role) in chunk {
            query = query
                .bind(group)
                .bind(*user)
                .bind(*role)
                .bind(0i64)
                .bind(now_ms);
        }
        added += query.execute(&mut *tx).await?.rows_affected();
    }
    Ok(added)
}
