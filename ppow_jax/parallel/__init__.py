"""Device meshes and the logical-axis rules that place parameters and batches on them."""
