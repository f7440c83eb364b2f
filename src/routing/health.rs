//! Active health checks: per provider, optional. A provider turns unhealthy
//! after `unhealthy_threshold` failed checks in a row and healthy again after
//! `healthy_threshold` passed ones; unhealthy providers' targets are skipped.
//! The checks of a configuration stop when its state is replaced (reload)
//! or the gateway drains.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::HealthCheckConfig;
use crate::provider::Provider;
use crate::shutdown::Shutdown;

/// Starts the checks of every provider that has them.
pub fn spawn_all<'a>(
    providers: impl Iterator<Item = &'a Arc<Provider>>,
    stop: &CancellationToken,
    shutdown: &Shutdown,
) {
    for provider in providers {
        if let Some(cfg) = provider.common().health_check.clone() {
            let (provider, stop, sd) = (provider.clone(), stop.clone(), shutdown.clone());
            shutdown.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = sd.draining() => {}
                    _ = run(provider, cfg) => {}
                }
            });
        }
    }
}

async fn run(provider: Arc<Provider>, cfg: HealthCheckConfig) {
    let common = provider.common();
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(cfg.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(cfg.timeout.get(), provider.health_check(&cfg.path))
            .await
            .unwrap_or(false);
        if ok {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let healthy = common.is_healthy();
        if healthy && fails >= cfg.unhealthy_threshold {
            common.set_healthy(false);
            tracing::warn!(provider = %common.name, "provider failed its health checks: marked unhealthy");
        } else if !healthy && passes >= cfg.healthy_threshold {
            common.set_healthy(true);
            tracing::info!(provider = %common.name, "provider passed its health checks: marked healthy");
        }
    }
}
