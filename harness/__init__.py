"""What runs a program: uapi layouts, the in-process simulator and the kernel VFIO backend."""
