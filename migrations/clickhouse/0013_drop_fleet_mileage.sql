-- The device-major mileage table, copied into fleet_mileage_days by 0012 and no longer written.
DROP TABLE IF EXISTS fleet_mileage;
