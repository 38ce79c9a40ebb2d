"""What `ppow_jax.main` runs: one module per config `mode`, each with `run(config, workdir)`."""
