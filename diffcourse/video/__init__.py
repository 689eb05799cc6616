"""Video diffusion (book §8): factorised space-time attention, inflation, spacetime patches, consistency."""
