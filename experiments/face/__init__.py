"""Face verification: ArcFace/CosFace + GSC training and the standard verification protocol (GSC paper Table 5)."""
