"""The kernel backend: a real VFIO migration device (``vfio``) and the QEMU rig that provides one (``rig``)."""
