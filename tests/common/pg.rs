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

pub async fn admin(sql: &str) {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, trust); set PG_TEST_URL for another");
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}
