"""Soak suite (pytest marker ``soak``): hundreds of jobs through the chaos proxy, and the fleet storm."""
