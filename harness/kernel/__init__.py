"""The kernel backend: real VFIO migration devices and the QEMU rig that provides one.

* ``vfio``    - a real device through the VFIO uAPI (``KernelDevice``), its watchdog;
* ``target``  - two devices as a fuzzing target (``--target kernel:...`` / ``--target mtty``);
* ``rig``     - a Debian 6.12 guest under QEMU with the ``mtty`` sample driver;
* ``vm``      - ``migfuzz vm``: prepare the rig, fuzz/sweep/selfcheck mtty in it, bring results back;
* ``flight``  - the flight recorder that names the program running when the guest kernel died;
* ``kmsg``    - kernel splats in console logs and /dev/kmsg;
* ``selfcheck`` - what the real driver answers (guest side of the rig tests).
"""
