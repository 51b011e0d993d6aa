"""QM9 molecules: data, an EGNN denoiser, chemistry metrics, RDKit rewards and file formats."""
