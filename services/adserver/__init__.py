"""The ad server role: counts rendered impressions and sends billing notices."""
