"""Short exercises on checking gradients (`gradient_checking`), graded like the rest of a
course assignment (`skscratch assignment`)."""
