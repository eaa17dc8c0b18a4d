//! A PostgreSQL database of a test's own, on the machine's server.
#![allow(dead_code)]

/// The machine's PostgreSQL, as the tests reach it (`PG_TEST_URL` overrides).
pub fn admin_url() -> String {
    std::env::var("PG_TEST_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into())
}

/// A fresh database, dropped when the test ends.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = super::unique("vg_audit").replace('-', "_");
        admin(&format!("CREATE DATABASE \"{name}\"")).await;
        TestDb { name }
    }

    /// A database of a test's own that does not exist yet: a server that
    /// cannot serve it, until [`TestDb::make`].
    pub fn later() -> TestDb {
        TestDb {
            name: super::unique("vg_audit").replace('-', "_"),
        }
    }

    /// Create the database [`TestDb::later`] named.
    pub async fn make(&self) {
        admin(&format!("CREATE DATABASE \"{}\"", self.name)).await;
    }

    pub fn url(&self) -> String {
        format!(
            "{} dbname={}",
            admin_url().replace("dbname=postgres", ""),
            self.name
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(admin(&sql));
        })
        .join();
    }
}

impl TestDb {
    /// Wait, at most `within`, until the audit trail's alarm events are those of
    /// stream sequences `seqs` (ascending); the sequences it holds at the end.
    pub async fn wait_for_alarms(&self, seqs: &[u64], within: std::time::Duration) -> Vec<u64> {
        self.wait_for("alarm", seqs, within).await
    }

    /// [`TestDb::wait_for_alarms`] for events of `kind` ("alarm", "session").
    pub async fn wait_for(
        &self,
        kind: &str,
        seqs: &[u64],
        within: std::time::Duration,
    ) -> Vec<u64> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // No table yet: the gateway's writer has not connected yet.
            let rows = client
                .query(
                    "SELECT seq FROM events WHERE kind = $1 ORDER BY seq",
                    &[&kind],
                )
                .await
                .unwrap_or_default();
            let stored: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
            if stored == seqs || tokio::time::Instant::now() > deadline {
                return stored;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

pub async fn admin(sql: &str) {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, trust); set PG_TEST_URL for another");
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}
