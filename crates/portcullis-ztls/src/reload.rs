//! Hot reload: the files are re-read when they change; a broken change never replaces a
//! working configuration.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use tokio::task::JoinHandle;

use crate::error::ZtlsError;
use crate::server::{FileSet, ServerConfigs, ZtlsConfig};

/// The outcome of the reloads so far.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStatus {
    /// Configurations put in force, the first load included.
    pub generation: u64,
    /// When the configuration in force was loaded.
    pub loaded_at: SystemTime,
    /// The error of the last attempt, if it failed (the previous configuration is in force).
    pub last_error: Option<ZtlsError>,
}

#[derive(Debug)]
struct State {
    configs: Arc<ServerConfigs>,
    /// Fingerprint of the files the configuration in force was built from.
    loaded: [u8; 32],
    /// Fingerprint of the last files tried (good or bad), so a broken file is reported once.
    tried: [u8; 32],
    status: ReloadStatus,
}

/// TLS configurations that follow their files. Share it by `Arc`.
///
/// Each new connection takes the configuration in force when it starts; connections already
/// open keep theirs, so a reload never drops one.
#[derive(Debug)]
pub struct ReloadingTls {
    config: ZtlsConfig,
    state: RwLock<State>,
    reload_lock: Mutex<()>,
}

impl ReloadingTls {
    /// Loads the configuration.
    ///
    /// # Errors
    ///
    /// If the files cannot be read or used: at start-up there is no previous configuration to
    /// fall back on.
    pub fn load(config: ZtlsConfig) -> Result<Self, ZtlsError> {
        let files = FileSet::read(&config)?;
        let configs = ServerConfigs::build(&config, &files)?;
        let fingerprint = files.fingerprint();
        Ok(Self {
            config,
            state: RwLock::new(State {
                configs: Arc::new(configs),
                loaded: fingerprint,
                tried: fingerprint,
                status: ReloadStatus {
                    generation: 1,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                },
            }),
            reload_lock: Mutex::new(()),
        })
    }

    /// The configurations in force.
    pub fn configs(&self) -> Arc<ServerConfigs> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s.configs),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().configs),
        }
    }

    /// The configuration for a new connection to `sni`.
    pub fn config_for(&self, sni: Option<&str>) -> Arc<ServerConfig> {
        self.configs().for_sni(sni)
    }

    /// The reload status.
    pub fn status(&self) -> ReloadStatus {
        match self.state.read() {
            Ok(s) => s.status.clone(),
            Err(poisoned) => poisoned.into_inner().status.clone(),
        }
    }

    /// How often [`spawn_watcher`](Self::spawn_watcher) looks at the files.
    pub fn interval(&self) -> std::time::Duration {
        self.config.reload_interval
    }

    /// Re-reads the files and, if they changed, builds and installs a new configuration.
    /// Returns whether a new configuration was installed.
    ///
    /// # Errors
    ///
    /// If the changed files cannot be used. The previous configuration stays in force, the
    /// error is recorded in [`status`](Self::status) and logged once per distinct content.
    pub fn reload(&self) -> Result<bool, ZtlsError> {
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .map_err(|_| ZtlsError::Tls("reload lock poisoned".into()))?;
        let files = FileSet::read(&self.config);
        let fingerprint = files.as_ref().map(FileSet::fingerprint).ok();
        let (loaded, tried) = match self.state.read() {
            Ok(s) => (s.loaded, s.tried),
            Err(_) => return Err(ZtlsError::Tls("state lock poisoned".into())),
        };
        if fingerprint == Some(loaded) {
            // The files are back to what is in force (a bad edit was reverted): nothing to do,
            // and nothing wrong any more.
            if tried != loaded
                && let Ok(mut state) = self.state.write()
            {
                state.tried = loaded;
                state.status.last_error = None;
            }
            return Ok(false);
        }
        let result = files.and_then(|f| ServerConfigs::build(&self.config, &f));
        let mut state = self
            .state
            .write()
            .map_err(|_| ZtlsError::Tls("state lock poisoned".into()))?;
        match result {
            Ok(configs) => {
                let fp = fingerprint.unwrap_or(loaded);
                state.configs = Arc::new(configs);
                state.loaded = fp;
                state.tried = fp;
                state.status.generation += 1;
                state.status.loaded_at = SystemTime::now();
                state.status.last_error = None;
                tracing::info!(
                    generation = state.status.generation,
                    "TLS configuration reloaded"
                );
                Ok(true)
            }
            Err(err) => {
                let new_failure = fingerprint.is_none_or(|fp| fp != tried);
                if let Some(fp) = fingerprint {
                    state.tried = fp;
                }
                if new_failure {
                    tracing::error!(error = %err, "TLS reload failed; the previous configuration stays in force");
                }
                state.status.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Checks the files every [`interval`](Self::interval) on a background task (stop it by
    /// aborting the handle).
    pub fn spawn_watcher(self: &Arc<Self>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(this.interval().max(std::time::Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let me = Arc::clone(&this);
                // File reads are blocking; keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        })
    }
}
