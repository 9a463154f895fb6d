"""Device profiles as data (``harness.profile`` reads them): sim, mtty, pci."""
