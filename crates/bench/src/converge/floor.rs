//! The floor: the same containers created and started with raw Engine API calls on the machine's engine, and
//! nothing else (no spec, no state, no retries), waited on until the engine calls them healthy.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};

use agent::runtime::DockerRuntime;

use super::engine::{create_roles, wait_healthy};
use super::template::{Captured, Template};

fn create_body(t: &Template, network: &str, data_dir: &Path) -> ContainerCreateBody {
    let mut mounts = Vec::new();
    if let Some((src, dst)) = &t.config {
        mounts.push(Mount {
            target: Some(dst.clone()),
            source: Some(src.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(dst) = &t.data {
        mounts.push(Mount {
            target: Some(dst.clone()),
            source: Some(data_dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
    }
    ContainerCreateBody {
        image: Some(t.image.clone()),
        cmd: (!t.cmd.is_empty()).then(|| t.cmd.clone()),
        env: Some(t.env.clone()),
        user: (!t.user.is_empty()).then(|| t.user.clone()),
        healthcheck: Some(t.health.clone()),
        labels: Some(HashMap::from([(
            "berth-bench".to_string(),
            network.to_string(),
        )])),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(t.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: Some(network.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_container(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<()> {
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    docker.create_container(Some(options), body).await?;
    docker
        .start_container(name, None::<StartContainerOptions>)
        .await?;
    Ok(())
}

/// One round under `tag` (its network's name and its containers' label); files under `dir`.
pub async fn round(
    engine: &DockerRuntime,
    cap: &Captured,
    tag: &str,
    dir: &Path,
) -> Result<Duration> {
    let docker = &engine.client();
    let data = dir.join(format!("{tag}-data"));
    std::fs::create_dir_all(&data)?;
    let started = Instant::now();
    docker
        .create_network(NetworkCreateRequest {
            name: tag.to_string(),
            driver: Some("bridge".into()),
            ..Default::default()
        })
        .await?;
    let pg = &cap.containers[0];
    let pg_name = format!("{tag}-pg");
    run_container(docker, &pg_name, create_body(pg, tag, &data)).await?;
    wait_healthy(docker, std::slice::from_ref(&pg_name)).await?;
    create_roles(engine, &pg_name, cap).await?;
    let services: Vec<String> = cap.containers[1..]
        .iter()
        .map(|t| format!("{tag}-{}", t.role))
        .collect();
    let starts = cap.containers[1..]
        .iter()
        .zip(&services)
        .map(|(t, name)| run_container(docker, name, create_body(t, tag, &data)));
    for r in futures::future::join_all(starts).await {
        r?;
    }
    wait_healthy(docker, &services).await?;
    Ok(started.elapsed())
}

/// Removes round `tag`'s containers and network, whatever state the round left them in.
pub async fn cleanup(docker: &Docker, tag: &str) {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([(
            "label",
            vec![format!("berth-bench={tag}")],
        )]))
        .build();
    if let Ok(list) = docker.list_containers(Some(options)).await {
        for c in list {
            if let Some(id) = c.id {
                let _ = docker
                    .remove_container(
                        &id,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await;
            }
        }
    }
    let _ = docker.remove_network(tag).await;
}
