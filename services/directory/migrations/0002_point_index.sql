-- A GiST index on the locations' points, so that a radius search reads only the locations
-- inside its bounding box (the B-tree on (latitude, longitude) reads a whole latitude band).
CREATE INDEX locations_point_gist ON locations USING gist (point(longitude, latitude));
