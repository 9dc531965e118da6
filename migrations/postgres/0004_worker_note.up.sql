-- What a worker last said about its health: why it is quarantined, or what
-- on its host (memory, disk) cuts into what it offers.
ALTER TABLE workers ADD COLUMN note TEXT NOT NULL DEFAULT '';
