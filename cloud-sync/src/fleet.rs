//! The hub's assembly: storage, the fleet CA, enrolment and the sync endpoint.

use std::sync::Arc;

use anyhow::Context;
use sync_quic::enrol::Enroller;
use sync_quic::hub::HubServer;
use sync_quic::identity::FleetCa;
use time::{Duration, OffsetDateTime};

use crate::cases::CaseHub;
use crate::config::{Backend, Config};
use crate::identity::{Identity, Settings};
use crate::storage::crypto::{CA_LABEL, Sealer};
use crate::storage::postgres::PgStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Storage, StorageError};

/// Everything a running hub holds.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The storage.
    pub storage: Arc<dyn Storage>,
    /// The cases.
    pub cases: Arc<CaseHub>,
    /// The fleet CA.
    pub ca: Arc<FleetCa>,
    /// Enrolment.
    pub enroller: Arc<Enroller>,
    /// Accounts, logins and tokens.
    pub identity: Arc<Identity>,
    /// Organisations' identity providers (single sign-on).
    pub sso: Arc<crate::identity::sso::Sso>,
    /// Vans' positions and geofences.
    pub geo: Arc<crate::geo::Geo>,
    server_name: String,
}

/// Opens the configured storage.
pub fn open_storage(config: &Config, sealer: &Sealer) -> anyhow::Result<Arc<dyn Storage>> {
    Ok(match config.storage.backend {
        Backend::Sqlite => Arc::new(
            SqliteStorage::open(&config.hub.data_dir, sealer)
                .with_context(|| format!("Failed to open the hub's store in {}", config.hub.data_dir.display()))?,
        ),
        Backend::Postgres => {
            let url = config.storage.postgres_url.as_deref().context("postgres_url is not set")?;
            Arc::new(
                PgStorage::connect(
                    url,
                    config.storage.postgres_schema.as_deref().unwrap_or("medvan"),
                    config.storage.postgres_connections.unwrap_or(8),
                )
                .context("Failed to open the hub's PostgreSQL store")?,
            )
        }
    })
}

/// Creates the key file if missing and the fleet CA if the storage has none. Returns the
/// CA's fingerprint. Safe to run twice: nothing that exists is replaced.
pub fn init(config: &Config) -> anyhow::Result<String> {
    std::fs::create_dir_all(&config.hub.data_dir)
        .with_context(|| format!("Failed to create {}", config.hub.data_dir.display()))?;
    let key_file = config.key_file();
    if !key_file.exists() {
        case_store::generate_key_file(&key_file)
            .with_context(|| format!("Failed to create the key file {}", key_file.display()))?;
    }
    let sealer = Sealer::load(&key_file)?;
    let storage = open_storage(config, &sealer)?;
    let ca = match load_ca(&*storage, &sealer)? {
        Some(ca) => ca,
        None => {
            let now = OffsetDateTime::now_utc();
            let ca = FleetCa::generate("Medvan fleet CA", now - Duration::days(1), now + Duration::days(3650 * 2))?;
            let (cert, key) = ca.to_der();
            match storage.save_ca(&cert, &sealer.seal(CA_LABEL, &key)) {
                Ok(()) => ca,
                // Another process made one first: use that.
                Err(StorageError::CaExists) => load_ca(&*storage, &sealer)?.context("the fleet CA vanished")?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(ca.fingerprint())
}

fn load_ca(storage: &dyn Storage, sealer: &Sealer) -> anyhow::Result<Option<FleetCa>> {
    let Some(stored) = storage.load_ca()? else { return Ok(None) };
    let cert = stored.cert;
    let key = sealer.open(CA_LABEL, &stored.sealed_key).context("The fleet CA key does not open with this key file")?;
    Ok(Some(FleetCa::from_der(&cert, &key)?))
}

impl Hub {
    /// Opens an initialised hub.
    pub fn open(config: &Config) -> anyhow::Result<Hub> {
        let sealer = Sealer::load(&config.key_file())?;
        let storage = open_storage(config, &sealer)?;
        let ca = load_ca(&*storage, &sealer)?.context("This hub has no fleet CA yet; run `medvan-hub init` first")?;
        let mut hub = Hub::assemble_with(
            storage,
            sealer,
            ca,
            config.hub.certificate_days,
            &config.hub.server_name,
            config.identity_settings(),
        )?;
        hub.sso = Arc::new(crate::identity::sso::Sso::new(&config.sso, config.hub.public_url.as_deref())?);
        Ok(hub)
    }

    /// A hub over given parts, with the default token settings (tests, tools).
    pub fn assemble(
        storage: Arc<dyn Storage>,
        sealer: Sealer,
        ca: FleetCa,
        certificate_days: u32,
        server_name: &str,
    ) -> anyhow::Result<Hub> {
        Hub::assemble_with(storage, sealer, ca, certificate_days, server_name, Settings::default())
    }

    /// A hub over given parts.
    pub fn assemble_with(
        storage: Arc<dyn Storage>,
        sealer: Sealer,
        ca: FleetCa,
        certificate_days: u32,
        server_name: &str,
        settings: Settings,
    ) -> anyhow::Result<Hub> {
        let ca = Arc::new(ca);
        let registry: Arc<dyn sync_quic::registry::Registry> =
            storage.clone() as Arc<dyn sync_quic::registry::Registry>;
        let enroller = Arc::new(Enroller::new(ca.clone(), registry, Duration::days(certificate_days.into())));
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let identity = Arc::new(
            Identity::open(storage.clone(), sealer.clone(), settings, now)
                .context("Failed to load the token signing keys")?,
        );
        let cases = Arc::new(CaseHub::new(storage.clone(), sealer));
        let geo = crate::geo::Geo::new(identity.clone(), cases.clone());
        Ok(Hub {
            storage,
            cases,
            ca,
            enroller,
            identity,
            sso: Default::default(),
            geo,
            server_name: server_name.to_owned(),
        })
    }

    /// Binds the sync endpoint with a fresh hub certificate from the fleet CA.
    pub fn bind_sync(&self, addr: std::net::SocketAddr) -> anyhow::Result<HubServer> {
        let socket =
            std::net::UdpSocket::bind(addr).with_context(|| format!("Failed to listen for vans on {addr} (UDP)"))?;
        self.sync_on_socket(socket)
    }

    /// The sync endpoint on a socket bound by the caller (in another network namespace, say).
    pub fn sync_on_socket(&self, socket: std::net::UdpSocket) -> anyhow::Result<HubServer> {
        let now = OffsetDateTime::now_utc();
        let (cert, key) = self.ca.issue_hub(&self.server_name, now - Duration::hours(1), now + Duration::days(365))?;
        let config = sync_quic::driver::server_config(self.ca.certificate(), cert, key, Default::default())?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(HubServer::new(endpoint, self.enroller.clone())
            .with_changes(self.cases.changes())
            .with_roster_changes(self.identity.roster_changes()))
    }

    /// Serves vans on `server` until its endpoint closes; their positions go to the
    /// geofence service meanwhile.
    pub async fn serve_sync(&self, server: HubServer) {
        let geo = tokio::spawn(self.geo.clone().run(self.cases.positions().subscribe()));
        let _stop_geo = AbortOnDrop(geo);
        let (cases, identity) = (self.cases.clone(), self.identity.clone());
        server.serve(move |device| cases.replica_for(device).with_roster(identity.clone())).await
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
