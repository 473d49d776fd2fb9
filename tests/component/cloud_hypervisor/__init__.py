"""Component tests for hypervisor.cloud_hypervisor against the contract-enforcing fake VMM."""
