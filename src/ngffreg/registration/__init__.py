"""Registration: coarse (whole volume at a pyramid level), blockwise (fine), reduce (blend)."""
